"""Where one deployment lives: one model for the CLI, the client, the handlers, the embedded
stack and the CDK outputs.

A `Deployment` starts from what a stack is built from (its `prefix`, region and silos) and
derives every name the embedded stack and the CDK app give their resources; what only the
running stack knows (ARNs, queue URLs, the bucket CloudFormation names, the principals'
keys) is filled in by whoever found it: the embedded stack's provisioning, a stack JSON,
`cdk deploy --outputs-file`, or the handler environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedasync.aws.session import Credentials
from fedasync.core.errors import ConfigError
from fedasync.deployment_json import (
    CDK_OUTPUT_IDS,
    CLIENT_KEY_PREFIX,
    from_cdk_outputs,
    from_stack_json,
    key_json,
)
from fedasync.resources import (
    ENV_BUCKET,
    ENV_CONTROL_QUEUE_URL,
    ENV_ENDPOINT_URL,
    ENV_REGION,
    ENV_SERVER_TABLE,
    ENV_TABLE,
    ENV_TOPIC_ARN,
    ENV_TOPIC_SHARDS,
    ROLE_NAME_MAX,
    ClientSpec,
    server_table_name,
    topic_shard_count,
)

__all__ = ["CDK_OUTPUT_IDS", "CLIENT_KEY_PREFIX", "Deployment"]

PREFIX_PATTERN = r"^[a-z][a-z0-9-]{0,23}$"


def _derived(data: dict[str, Any]) -> dict[str, Any]:
    """Fill the names a stack gives its resources from its prefix, where none is given."""
    prefix = str(data.get("prefix") or "fedasync")
    names = {"table": f"{prefix}-table", "bucket": f"{prefix}-models"}
    for field, name in names.items():
        if not data.get(field):
            data[field] = name
    if not data.get("server_table"):  # the inbox's companion: what the server decides
        data["server_table"] = server_table_name(str(data["table"]))
    clients = data.get("clients") or ()
    if data.get("topic_shards") is None and clients:  # else: unknown, 1 unless found
        ids = [c.client_id if isinstance(c, ClientSpec) else c["client_id"] for c in clients]
        data["topic_shards"] = topic_shard_count(ids)
    return data


class Deployment(BaseModel):
    """Where one deployment's resources are. Names default to those of the stack `prefix`
    (the embedded stack's; a CDK stack's bucket is CloudFormation's, read from its outputs)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prefix: str = Field(default="fedasync", pattern=PREFIX_PATTERN)
    region: str = "us-east-1"
    endpoint_url: str | None = None  # None: AWS itself
    clients: tuple[ClientSpec, ...] = ()  # the silos the stack is built for
    # "" (or absent): the name the stack `prefix` gives it
    table: str = ""  # the inbox: silos' update records and heartbeats
    server_table: str = ""  # what the server decides (the redesign's second table)
    bucket: str = ""
    topic_arn: str = ""  # shard 0's; shard i's is `shard_topic(topic_arn, i)`; "": unknown
    topic_shards: int = Field(default=1, ge=1)
    control_queue_url: str | None = None
    state_machine_arn: str | None = None
    stream_arn: str | None = None
    client_queue_urls: dict[str, str] = Field(default_factory=dict)
    # what only the embedded stack has (its DLQs, the stream mapping's failure queue)
    control_dlq_url: str | None = None
    aggregate_failures_url: str | None = None
    client_dlq_urls: dict[str, str] = Field(default_factory=dict)
    # principal (`client:<id>`, `operator`, `aggregate`, ...) -> its own key: what
    # `fedasync local up` hands out; empty on AWS (roles, the default credential chain)
    principals: dict[str, Credentials] = Field(default_factory=dict, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        return _derived(from_stack_json(dict(data))) if isinstance(data, Mapping) else data

    # --- names the stack gives its resources (embedded and CDK alike) -------------------

    @property
    def topic_name(self) -> str:
        """Shard 0's name; shard i > 0 is `{topic_name}-{i}` (`shard_topic`)."""
        return f"{self.prefix}-global-model-ready"

    @property
    def control_queue_name(self) -> str:
        return f"{self.prefix}-control"

    @property
    def control_dlq_name(self) -> str:
        return f"{self.prefix}-control-dlq"

    @property
    def aggregate_failures_name(self) -> str:
        return f"{self.prefix}-aggregate-failures"

    @property
    def state_machine_name(self) -> str:
        return f"{self.prefix}-fl-task"

    def client_queue_name(self, client_id: str) -> str:
        return f"{self.prefix}-client-{client_id}"

    def client_dlq_name(self, client_id: str) -> str:
        return f"{self.prefix}-client-{client_id}-dlq"

    # A client finds its queue and its role by these rules from the prefix (the stack is
    # `{prefix}-server`), its id, the region and the account: the CDK stack names them so
    # and has no output per client (which would cap a stack at ~80 clients).
    def client_queue_url(self, client_id: str, account: str) -> str:
        name = self.client_queue_name(client_id)
        return f"https://sqs.{self.region}.amazonaws.com/{account}/{name}"

    def client_role_name(self, client_id: str) -> str:
        """`{prefix}-client-{id}`; past IAM's 64 characters, cut to 55 plus a hash of it."""
        name = f"{self.prefix}-client-{client_id}"
        if len(name) <= ROLE_NAME_MAX:
            return name
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
        return f"{name[: ROLE_NAME_MAX - 9]}-{digest}"

    def client_role_arn(self, client_id: str, account: str, partition: str = "aws") -> str:
        return f"arn:{partition}:iam::{account}:role/{self.client_role_name(client_id)}"

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(c.client_id for c in self.clients)

    def require(self, field: str) -> str:
        """A coordinate only the running stack knows (`state_machine_arn`, `stream_arn`,
        a queue URL...), or a clear error if this description of the stack lacks it."""
        value = getattr(self, field)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"deployment {self.prefix!r} does not say its {field}; read it from the "
                "running stack (`fedasync local up`'s stack JSON, or the CDK outputs)"
            )
        return value

    # --- keys -----------------------------------------------------------------------------

    def credentials(self, principal: str) -> Credentials | None:
        """`principal`'s own key, if the deployment hands one out."""
        return self.principals.get(principal)

    # --- the handlers' environment --------------------------------------------------------

    def handler_env(self) -> dict[str, str]:
        """The environment the server handlers read (CDK sets the same on each Lambda)."""
        env = {
            ENV_TABLE: self.table,
            ENV_SERVER_TABLE: self.server_table,
            ENV_BUCKET: self.bucket,
            ENV_TOPIC_ARN: self.topic_arn,
            ENV_TOPIC_SHARDS: str(self.topic_shards),
            ENV_REGION: self.region,
        }
        if self.control_queue_url is not None:
            env[ENV_CONTROL_QUEUE_URL] = self.control_queue_url
        if self.endpoint_url is not None:
            env[ENV_ENDPOINT_URL] = self.endpoint_url
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Deployment:
        """What a handler knows of its deployment: the environment `handler_env` sets."""
        env = os.environ if env is None else env
        return cls(
            endpoint_url=env.get(ENV_ENDPOINT_URL) or None,
            region=env.get(ENV_REGION, "us-east-1"),
            table=env[ENV_TABLE],
            server_table=env.get(ENV_SERVER_TABLE),
            bucket=env[ENV_BUCKET],
            topic_arn=env[ENV_TOPIC_ARN],
            topic_shards=int(env.get(ENV_TOPIC_SHARDS, "1")),
            control_queue_url=env.get(ENV_CONTROL_QUEUE_URL),
        )

    # --- stack JSON and CDK outputs -------------------------------------------------------

    @classmethod
    def load(
        cls, path: Path, endpoint_url: str | None = None, region: str | None = None
    ) -> Deployment:
        """Read a stack JSON (ours, or `cdk deploy --outputs-file` as it is); an explicit
        endpoint or region overrides the file's."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"stack config {str(path)!r} is unreadable: {exc}") from exc
        if isinstance(data, dict):
            data = from_cdk_outputs(data)
        if not isinstance(data, dict) or not data.get("table"):
            raise ConfigError(f"stack config {str(path)!r} is invalid: it names no table")
        if endpoint_url is not None:
            data["endpoint_url"] = endpoint_url
        if region is not None:
            data["region"] = region
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"stack config {str(path)!r} is invalid: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write the stack JSON `load` reads (keys included: keep it private)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.stack_json(), indent=2) + "\n")

    def stack_json(self) -> dict[str, Any]:
        """The stack JSON in the shape `fedasync local up --stack-config` has always
        written: `"clients": {id: {"queue_url", "aws_access_key_id",
        "aws_secret_access_key"}}` and `"operator": {"aws_access_key_id",
        "aws_secret_access_key"}`; any other principal's key under `"principals"`."""
        data = self.model_dump(
            mode="json", exclude_none=True, exclude={"clients", "principals", "client_queue_urls"}
        )
        ids = [*self.client_ids]
        ids += [c for c in self.client_queue_urls if c not in ids]
        ids += [
            p.removeprefix(CLIENT_KEY_PREFIX)
            for p in self.principals
            if p.startswith(CLIENT_KEY_PREFIX) and p.removeprefix(CLIENT_KEY_PREFIX) not in ids
        ]
        specs = {c.client_id: c for c in self.clients}
        clients: dict[str, dict[str, Any]] = {}
        for client_id in ids:
            entry: dict[str, Any] = {}
            spec = specs.get(client_id)
            if spec is not None and spec.principal is not None:
                entry["principal"] = spec.principal
            if client_id in self.client_queue_urls:
                entry["queue_url"] = self.client_queue_urls[client_id]
            entry |= key_json(self.principals.get(CLIENT_KEY_PREFIX + client_id))
            clients[client_id] = entry
        data["clients"] = clients
        if "operator" in self.principals:
            data["operator"] = key_json(self.principals["operator"])
        others = {
            name: key_json(key)
            for name, key in self.principals.items()
            if name != "operator" and not name.startswith(CLIENT_KEY_PREFIX)
        }
        if others:
            data["principals"] = others
        return data
