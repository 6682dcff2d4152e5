"""Wire messages: the global-model notice, the local-update record, the heartbeat.

Each carries `schema_version`; a version this build does not know is rejected with a
clear `SchemaError`, never guessed at. Each has a stable `idempotency_key` so that
at-least-once delivery collapses to exactly-once effects.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedasync.core import keys
from fedasync.core.config import CLIENT_ID_PATTERN, TASK_NAME_PATTERN
from fedasync.core.config_encoding import UpdateEncoding
from fedasync.core.errors import SchemaError, UnknownClientError
from fedasync.core.privacy import PrivacyConfig

SCHEMA_VERSION = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"
UPDATE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"


class WireMessage(BaseModel):
    """Base of every message; strict: unknown fields and unknown versions are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # strict: "1" or true is a different schema's spelling, not version 1
    schema_version: int = Field(default=SCHEMA_VERSION, strict=True)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is not supported (this build reads {SCHEMA_VERSION})"
            )
        return value

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any]) -> Self:
        """Parse JSON text or a mapping; any problem becomes a `SchemaError` naming it."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SchemaError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise SchemaError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in exc.errors()
            )
            who = f" from client {data.get('client_id')!r}" if data.get("client_id") else ""
            who += f" for task {data.get('task_name')!r}" if data.get("task_name") else ""
            raise SchemaError(f"{cls.__name__}{who} is malformed: {problems}") from exc

    def to_json(self) -> str:
        return self.model_dump_json()


class GlobalModelNotice(WireMessage):
    """Published on SNS when a global version is ready (or the task has ended)."""

    kind: Literal["global_model"] = "global_model"
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    mode: Literal["sync", "async"]
    version: int = Field(ge=0)
    round_id: int | None = Field(default=None, ge=0)
    s3_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size_bytes: int = Field(ge=0)
    final: bool = False
    # async: how many updates the server had absorbed when it announced this model. The
    # version moves only when the global model does (FedBuff: every K updates), so the
    # same version with a new seq is a new go-ahead: a silo trains again, not idles.
    seq: int | None = Field(default=None, ge=0)
    # which creation of the task this is (the TASK item's random incarnation): a task
    # created again under the same name (a new embedded stack, a recreated table) starts
    # at version 0 again, and its notices must not pass for ones a silo already handled
    incarnation: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,32}$")
    # FedProx (Li et al. 2020): the silo minimises F_k(w) + mu/2 ||w - w_global||^2, w_global
    # this notice's model. Left out of the JSON when 0, so a notice without FedProx is
    # byte for byte today's, and a silo built before the field still reads it.
    proximal_mu: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, strict=True)

    # the task's privacy configuration; with mode `local` each silo clips and noises its
    # own delta before upload (client/privacy.py) and reports its own epsilon. Left out of
    # the JSON when None, for the same reason as `proximal_mu`.
    privacy: PrivacyConfig | None = None
    # the task's update_encoding: upload half(local - this model) (fedasync.core.deltas);
    # left out of the JSON when None, as `proximal_mu`
    update_encoding: UpdateEncoding | None = None

    def to_json(self) -> str:
        unset = {"proximal_mu"} if not self.proximal_mu else set()
        unset |= {f for f in ("privacy", "update_encoding") if getattr(self, f) is None}
        return self.model_dump_json(exclude=unset or None)

    @model_validator(mode="after")
    def _seq_is_async(self) -> Self:
        if self.seq is not None and self.mode != "async":
            raise ValueError("seq is for async notices; a sync notice names its round_id")
        return self

    @property
    def idempotency_key(self) -> str:
        seq = f"#s{self.seq:08d}" if self.seq is not None else ""
        suffix = "#final" if self.final else ""
        task = f"{self.task_name}@{self.incarnation}" if self.incarnation else self.task_name
        return f"{task}#v{self.version:08d}{seq}{suffix}"


class UpdateRecord(WireMessage):
    """A client's local model: written to DynamoDB after its object is in S3."""

    kind: Literal["update"] = "update"
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    client_id: str = Field(pattern=CLIENT_ID_PATTERN)
    update_id: str = Field(pattern=UPDATE_ID_PATTERN)
    base_version: int = Field(ge=0)
    round_id: int | None = Field(default=None, ge=0)
    s3_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size_bytes: int = Field(ge=0)
    num_examples: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    # local DP: the epsilon the silo has spent on this task, this update included (its
    # own accountant, at the task's delta); None when the silo adds no noise itself
    local_epsilon: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # the object is half(local - global of base_version) in this dtype (fedasync.core.deltas);
    # None: the local model itself
    delta_dtype: Literal["float16", "bfloat16"] | None = None

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics {bad} are not finite numbers")
        return value

    @property
    def sk(self) -> str:
        return keys.update_sk(self.client_id, self.update_id, self.round_id)

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_name}#{self.sk}"

    def item(self) -> dict[str, Any]:
        """The record as its table item, key included: what a client writes."""
        return {"sk": self.sk, **self.model_dump(exclude_none=True)}

    def check_key(self) -> None:
        """The object must lie under the client's own prefix: no spoofing another silo."""
        prefix = keys.local_prefix(self.task_name, self.client_id)
        if not self.s3_key.startswith(prefix) or ".." in self.s3_key:
            raise UnknownClientError(
                f"update {self.update_id!r} from client {self.client_id!r} for task "
                f"{self.task_name!r} points to {self.s3_key!r}; expected a key under {prefix!r}",
                reason="spoofed_key",
            )


class Heartbeat(WireMessage):
    """A client's liveness record (DynamoDB item with a TTL)."""

    kind: Literal["heartbeat"] = "heartbeat"
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    client_id: str = Field(pattern=CLIENT_ID_PATTERN)
    sent_at: float = Field(ge=0)
    expires_at: int = Field(ge=0)
    status: Literal["idle", "downloading", "training", "uploading", "stopped"] = "idle"
    version: int | None = Field(default=None, ge=0)

    @property
    def sk(self) -> str:
        return keys.heartbeat_sk(self.client_id)

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_name}#{self.sk}"

    def alive_at(self, now: float) -> bool:
        """DynamoDB TTL deletes lazily (and moto never): judge liveness by time."""
        return now < self.expires_at


class ControlMessage(WireMessage):
    """What a wait-for-token state of the ASL sends to the server's control queue.

    The token never leaves the server side: it is stored on the task's or round's item
    and used by the server's own handlers, never taken from a client's record.
    """

    kind: Literal[
        "open_round",
        "check_round",
        "close_round",
        "open_task",
        "finalize",
        "secagg_phase",  # a slice of a SecAgg phase's wait (closes it early when all answered)
        "secagg_close",  # the phase's deadline: close it with who answered, or fail the round
    ]
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    task_token: str = Field(min_length=1, max_length=4096)
    round_id: int | None = Field(default=None, ge=0)
    reason: str | None = Field(default=None, max_length=64)
    # SecAgg: the phase of a secagg_* message (fedasync.core.secagg.notice.PHASES)
    phase: str | None = Field(default=None, pattern=r"^[a-z_]{1,32}$")

    @property
    def idempotency_key(self) -> str:
        where = f"#r{self.round_id:08d}" if self.round_id is not None else ""
        return f"{self.task_name}#{self.kind}{where}"
