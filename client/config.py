"""What one silo run needs to know: who it is, where the stack is, how it paces itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from fedasync.core.config import CLIENT_ID_PATTERN, DEFAULT_MAX_MODEL_BYTES, TASK_NAME_PATTERN
from fedasync.deployment import Deployment

# S3 refuses multipart parts under 5 MiB (except the last); 8 MiB matches the AWS CLI.
MIN_PART_BYTES = 5 * 1024 * 1024
DEFAULT_PART_BYTES = 8 * 1024 * 1024
# the deployment's coordinates as flat fields (CLI flags, older callers)
FLAT_FIELDS = frozenset({"endpoint_url", "region", "prefix", "bucket", "table", "queue_url"})


class ClientConfig(BaseModel):
    """One silo's run: who it is, where its stack is (`deployment`), how it paces itself.

    The stack's coordinates may also be given flat (`endpoint_url`, `region`, `prefix`,
    `bucket`, `table`, `queue_url`, as the CLI flags are): they fill the deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    client_id: str = Field(pattern=CLIENT_ID_PATTERN)
    deployment: Deployment = Field(default_factory=Deployment)
    # the silo's own access key (the embedded stack's stack config carries one per
    # client); None: the default credential chain (an assumed client role on AWS)
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    # pacing
    heartbeat_interval_s: float = Field(default=10.0, gt=0.0)
    heartbeat_ttl_s: int | None = Field(default=None, ge=1)
    visibility_timeout_s: int = Field(default=60, ge=1, le=43_200)
    wait_time_s: int = Field(default=20, ge=0, le=20)
    # training
    epochs: int = Field(default=1, ge=1)
    seed: int = 0
    # the trainer raising for this many notices in a row ends the run (each is given back
    # to the queue for a retry first): a broken trainer must not spin, nor upload
    max_train_failures: int = Field(default=3, ge=1)
    # transfers
    part_size: int = Field(default=DEFAULT_PART_BYTES, ge=MIN_PART_BYTES)
    download_attempts: int = Field(default=2, ge=1)
    max_model_bytes: int = Field(default=DEFAULT_MAX_MODEL_BYTES, ge=64)
    work_dir: Path | None = None
    # secure aggregation: the silo's Ed25519 identity (a PEM file, `fedasync client
    # keygen`) and every silo's public key, base64, as the task config's
    # `secure_aggregation.identities` holds them (registered out of band)
    secagg_key: Path | None = None
    secagg_identities: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_deployment(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not FLAT_FIELDS & data.keys():
            return data
        data = dict(data)
        base = data.pop("deployment", None)
        where: dict[str, Any] = (
            base.model_dump() if isinstance(base, Deployment) else dict(base or {})
        )
        flat = {k: data.pop(k) for k in FLAT_FIELDS & data.keys()}
        queue_url = flat.pop("queue_url", None)
        where |= {k: v for k, v in flat.items() if v is not None}
        if queue_url is not None:
            where["client_queue_urls"] = {**where.get("client_queue_urls", {}),
                                          str(data.get("client_id")): queue_url}  # fmt: skip
        data["deployment"] = where
        return data

    @model_validator(mode="after")
    def _visibility_outlasts_heartbeat(self) -> ClientConfig:
        # the heartbeat re-arms the message's visibility; it must come round first
        if self.visibility_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}), or a message being "
                "worked on would reappear to another receiver"
            )
        return self

    @property
    def queue_url(self) -> str | None:
        """The silo's own queue, if the deployment knows it (else found by `queue_name`)."""
        return self.deployment.client_queue_urls.get(self.client_id)

    @property
    def queue_name(self) -> str:
        return self.deployment.client_queue_name(self.client_id)

    @property
    def ttl_s(self) -> int:
        """How long a heartbeat vouches for the client: three missed beats mean dead."""
        return self.heartbeat_ttl_s or max(1, int(3 * self.heartbeat_interval_s + 0.999))
