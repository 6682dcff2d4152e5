"""Operator commands on a running deployment: start, inspect and stop a task.

The same code reaches the embedded stack and AWS; only `StackConfig.endpoint_url` and
the credentials differ. Resource names come from `StackSpec(prefix)` (what the embedded
stack creates) unless a stack config JSON names them (a CDK deployment, whose bucket
CloudFormation names; `fedasync local up` writes one too). The state machine is found
by name with `ListStateMachines` when the JSON does not give its ARN.

Every function returns plain data (JSON-able dicts); the CLI only renders it.

Stopping (`stop`):
- async: `finish_task(reason="stopped")` with the completion token stored on the TASK
  item; the ASL's `IsTaskFinished` sees `finished: true` and the execution ends
  SUCCEEDED with the current global model as `final.safetensors`.
- sync: the same, with the open round's token: `IsRoundClosed` sends a
  `{"finished": true}` answer to RecordSucceeded, so the execution ends SUCCEEDED.
- no token yet (the execution has not reached its wait): the final model is written the
  same way, the TASK item is marked STOPPED, and the execution is ended with
  `StopExecution` (status ABORTED; the TASK item's `cause` names the final version).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import structlog
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from fedasync.aws.session import AwsContext, Credentials
from fedasync.core import keys
from fedasync.core.codec import Array
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, TaskNotFoundError
from fedasync.local.provision import StackEndpoints
from fedasync.resources import StackSpec
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore, Where
from fedasync.server.task_view import TaskView
from fedasync.server.tasks import start_task

log = structlog.get_logger()

STOPPED_REASON = "stopped"
_POLL_S = 0.2


class PrincipalKeys(BaseModel):
    """One principal's own access key (the embedded stack gives each principal one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aws_access_key_id: str
    aws_secret_access_key: str = Field(repr=False)

    def credentials(self) -> Credentials:
        return Credentials(self.aws_access_key_id, self.aws_secret_access_key)


class ClientAccess(PrincipalKeys):
    queue_url: str


class StackConfig(BaseModel):
    """Where one deployment's resources are (the JSON `--stack-config` reads and writes)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = "fedasync"
    table: str
    bucket: str
    topic_arn: str | None = None
    state_machine_arn: str | None = None
    state_machine_name: str | None = None
    client_queue_urls: dict[str, str] = Field(default_factory=dict)
    # what `local up` writes: each silo's queue and key, the operator's key
    clients: dict[str, ClientAccess] = Field(default_factory=dict)
    operator: PrincipalKeys | None = None

    @classmethod
    def from_prefix(cls, prefix: str, endpoint_url: str | None, region: str) -> StackConfig:
        spec = StackSpec(prefix=prefix, region=region)
        return cls(
            endpoint_url=endpoint_url,
            region=region,
            prefix=prefix,
            table=spec.table_name,
            bucket=spec.bucket_name,
            state_machine_name=spec.state_machine_name,
        )

    @classmethod
    def from_endpoints(cls, endpoints: StackEndpoints, prefix: str) -> StackConfig:
        """What `fedasync local up` writes: the embedded stack's resolved names."""
        return cls(
            endpoint_url=endpoints.endpoint_url,
            region=endpoints.region,
            prefix=prefix,
            table=endpoints.table,
            bucket=endpoints.bucket,
            topic_arn=endpoints.topic_arn,
            state_machine_arn=endpoints.state_machine_arn,
            client_queue_urls=endpoints.client_queue_urls,
            clients={
                client_id: ClientAccess(
                    queue_url=url, **_keys(endpoints.principals.get(f"client:{client_id}"))
                )
                for client_id, url in endpoints.client_queue_urls.items()
                if f"client:{client_id}" in endpoints.principals
            },
            operator=(
                PrincipalKeys(**_keys(endpoints.principals["operator"]))
                if "operator" in endpoints.principals
                else None
            ),
        )

    @classmethod
    def load(cls, path: Path, endpoint_url: str | None, region: str | None) -> StackConfig:
        """Read a stack JSON; an explicit endpoint or region overrides the file's."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"stack config {str(path)!r} is unreadable: {exc}") from exc
        if isinstance(data, dict):
            data = _from_cdk_outputs(data)
        if endpoint_url is not None:
            data["endpoint_url"] = endpoint_url
        if region is not None:
            data["region"] = region
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"stack config {str(path)!r} is invalid: {exc}") from exc


def _keys(credentials: Credentials | None) -> dict[str, str]:
    if credentials is None:
        return {}
    return {
        "aws_access_key_id": credentials.access_key_id,
        "aws_secret_access_key": credentials.secret_access_key,
    }


def _from_cdk_outputs(data: dict[str, Any]) -> dict[str, Any]:
    """Accept `cdk deploy --outputs-file` as it is: {StackName: {TableName, BucketName, ...}}."""
    stacks = [v for v in data.values() if isinstance(v, dict) and "TableName" in v]
    if "table" in data or len(stacks) != 1:
        return data
    out = stacks[0]
    return {
        "region": out.get("Region", "us-east-1"),
        "table": out["TableName"],
        "bucket": out.get("BucketName"),
        "topic_arn": out.get("TopicArn"),
        "state_machine_arn": out.get("StateMachineArn"),
    }


def resolve_stack(
    *, endpoint_url: str | None, prefix: str, region: str | None, stack_config: Path | None
) -> StackConfig:
    """Names from the stack JSON if given, else derived from the prefix."""
    if stack_config is not None:
        return StackConfig.load(stack_config, endpoint_url, region)
    return StackConfig.from_prefix(prefix, endpoint_url, region or "us-east-1")


def _store(aws: AwsContext, stack: StackConfig) -> ServerStore:
    # the topic is only needed by finish_task (final notice); look it up lazily below
    return ServerStore(aws, Where(table=stack.table, bucket=stack.bucket, topic_arn=""))


async def _state_machine_arn(aws: AwsContext, stack: StackConfig) -> str:
    if stack.state_machine_arn:
        return stack.state_machine_arn
    name = stack.state_machine_name or StackSpec(prefix=stack.prefix).state_machine_name
    sfn = await aws.sfn()
    async for page in sfn.get_paginator("list_state_machines").paginate():
        for machine in page["stateMachines"]:
            if machine["name"] == name:
                return machine["stateMachineArn"]
    raise ConfigError(
        f"no state machine named {name!r} at {stack.endpoint_url or 'AWS'} "
        f"(region {stack.region}); is the stack with prefix {stack.prefix!r} up?"
    )


async def _topic_arn(aws: AwsContext, stack: StackConfig) -> str:
    if stack.topic_arn:
        return stack.topic_arn
    name = StackSpec(prefix=stack.prefix).topic_name
    # CreateTopic is idempotent and returns the existing topic's ARN; no list paging needed
    return (await (await aws.sns()).create_topic(Name=name))["TopicArn"]


def _execution_arn(machine_arn: str, task_name: str) -> str:
    return f"{machine_arn.replace(':stateMachine:', ':execution:')}:{task_name}"


async def _view(store: ServerStore, task_name: str) -> TaskView:
    return TaskView.from_item(task_name, await store.get_task(task_name))


async def _task(store: ServerStore, task_name: str) -> tuple[dict[str, Any], TaskView]:
    """The TASK item and its view; `TaskNotFoundError` names the task when it is absent."""
    item = await store.get_task(task_name)
    if item is None:
        raise TaskNotFoundError(f"task {task_name!r} does not exist in table {store.where.table!r}")
    return item, TaskView.from_item(task_name, item)


async def start(
    aws: AwsContext, stack: StackConfig, cfg: TaskConfig, initial: dict[str, Array]
) -> dict[str, Any]:
    """Create the task and start its execution; the same config again returns the same ARN."""
    machine = await _state_machine_arn(aws, stack)
    arn = await start_task(_store(aws, stack), machine, cfg, initial)
    log.info("task.started", task_name=cfg.task_name, execution_arn=arn)
    return {"task_name": cfg.task_name, "mode": cfg.mode, "execution_arn": arn}


async def _execution(aws: AwsContext, arn: str) -> dict[str, Any]:
    sfn = await aws.sfn()
    try:
        desc = await sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        return {"arn": arn, "status": "UNKNOWN", "error": str(exc)}
    return {
        "arn": arn,
        "status": desc["status"],
        "started": desc["startDate"].isoformat(),
        "stopped": desc["stopDate"].isoformat() if desc.get("stopDate") else None,
        "error": desc.get("error"),
        "cause": desc.get("cause"),
    }


def _updates(items: list[dict[str, Any]]) -> dict[str, Any]:
    rejected = [
        {
            "client_id": i.get("client_id"),
            "update_id": i.get("update_id"),
            "reason": i.get("reason"),
            "detail": i.get("detail"),
            "decided_at": i.get("decided_at"),
        }
        for i in items
        if i.get("verdict") == "rejected"
    ]
    rejected.sort(key=lambda r: float(r["decided_at"] or 0.0))  # oldest first
    return {
        "accepted": sum(1 for i in items if i.get("verdict") == "accepted"),
        "rejected": len(rejected),
        "pending": sum(1 for i in items if not i.get("verdict")),
        "rejections": rejected,
    }


def _clients(cfg: TaskConfig, beats: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """Alive = a heartbeat whose `expires_at` is still ahead (TTL deletion is lazy) and
    that is not the client's last word (`stopped`, sent when it leaves a finished task)."""
    seen = {
        str(b["client_id"]): {
            "status": b.get("status"),
            "version": b.get("version"),
            "alive": now < float(b.get("expires_at", 0)) and b.get("status") != "stopped",
            "last_seen_s": round(now - float(b.get("sent_at", now)), 1),
        }
        for b in beats
        if b.get("client_id")
    }
    return {
        "expected": list(cfg.clients),
        "alive": sorted(c for c, b in seen.items() if b["alive"]),
        "heartbeats": seen,
    }


async def status(
    aws: AwsContext, stack: StackConfig, task_name: str, *, now: float | None = None
) -> dict[str, Any]:
    """Mode, version/round, alive clients, update verdicts and the execution, as data."""
    store = _store(aws, stack)
    item, view = await _task(store, task_name)
    cfg, now = view.cfg, time.time() if now is None else now
    arn = item.get("execution_arn") or _execution_arn(
        await _state_machine_arn(aws, stack), task_name
    )
    out: dict[str, Any] = {
        "task_name": task_name,
        "mode": cfg.mode,
        "strategy": cfg.aggregation,
        "status": view.status,
        "version": view.head_version,
        "finished": view.finished,
        "head_sha256": view.head_sha256,
        "final_version": item.get("final_version"),
        "final_sha256": item.get("final_sha256"),
        "cause": item.get("cause"),
    }
    if cfg.mode == "sync":
        rounds = await store.query_prefix(task_name, keys.ROUND_PREFIX)
        out["round"] = None if view.finished else view.head_version
        out["rounds"] = cfg.rounds
        out["rounds_closed"] = sum(1 for r in rounds if r.get("closed"))
    else:
        out["max_versions"] = cfg.max_versions
        out["absorbed"] = view.state.absorbed
    out["clients"] = _clients(cfg, await store.query_prefix(task_name, keys.HEARTBEAT_PREFIX), now)
    out["updates"] = _updates(await store.query_prefix(task_name, keys.UPDATE_PREFIX))
    out["execution"] = await _execution(aws, str(arn))
    return out


async def _wait_token(store: ServerStore, view: TaskView, wait_s: float) -> str | None:
    """The token of the wait the execution is parked in, once the control handler stored it.

    async: `open_task` puts it on the TASK item; sync: `open_round` on the head's ROUND item.
    """
    sk = keys.TASK_SK if view.cfg.mode == "async" else keys.round_sk(view.head_version)
    deadline = time.monotonic() + wait_s
    while True:
        item = await store.get_item(view.task_name, sk) or {}
        token = item.get("token") or None
        if token or time.monotonic() >= deadline:
            return str(token) if token else None
        await asyncio.sleep(_POLL_S)


async def _wait_execution(aws: AwsContext, arn: str, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        execution = await _execution(aws, arn)
        if execution["status"] != "RUNNING" or time.monotonic() >= deadline:
            return execution
        await asyncio.sleep(_POLL_S)


async def stop(
    aws: AwsContext, stack: StackConfig, task_name: str, *, wait_s: float = 30.0
) -> dict[str, Any]:
    """End the task with its current global model as final (see the module docstring).

    Idempotent: stopping a task that already ended reports how it ended.
    """
    where = Where(table=stack.table, bucket=stack.bucket, topic_arn=await _topic_arn(aws, stack))
    store = ServerStore(aws, where)
    item, view = await _task(store, task_name)
    arn = str(
        item.get("execution_arn") or _execution_arn(await _state_machine_arn(aws, stack), task_name)
    )
    execution = await _execution(aws, arn)
    if view.finished or execution["status"] not in ("RUNNING", "UNKNOWN"):
        return {**_ended(item, view), "how": "already_ended", "execution": execution}
    token = await _wait_token(store, view, wait_s)
    if token is not None:
        # async: the task's completion token; sync: the open round's token, whose
        # {"finished": true} answer ends the rounds loop (IsRoundClosed → RecordSucceeded)
        how = "callback"
        await finish_task(store, task_name, STOPPED_REASON, token=token)
    else:
        how = "stop_execution"
        await finish_task(store, task_name, STOPPED_REASON, token=None)
        await _abort(aws, store, view, arn, token)
    execution = await _wait_execution(aws, arn, wait_s)
    item = await store.get_task(task_name) or item
    log.info("task.stop", how=how, execution_status=execution["status"])
    return {**_ended(item, await _view(store, task_name)), "how": how, "execution": execution}


async def _abort(
    aws: AwsContext, store: ServerStore, view: TaskView, arn: str, token: str | None
) -> None:
    """Mark the task STOPPED, StopExecution, then answer the parked wait's token.

    On AWS StopExecution ends the execution at once and the answer is refused as spent
    (and ignored). moto parks a stopped execution in its wait state until the wait
    returns; the answer wakes it and it ends ABORTED.
    """
    final = await _view(store, view.task_name)
    cause = (
        f"task {view.task_name!r} stopped by the operator; the final model is version "
        f"{final.head_version} ({keys.final_key(view.task_name)})"
    )
    op = store.update_op(
        view.task_name,
        keys.TASK_SK,
        {"status": "STOPPED", "cause": cause},
        condition="#status IN (:starting, :running)",
        condition_values={":starting": "STARTING", ":running": "RUNNING"},
    )
    await store.update(op)
    sfn = await aws.sfn()
    try:
        await sfn.stop_execution(executionArn=arn, error="Stopped", cause=cause)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionDoesNotExist":
            raise
    if token is not None:
        await store.send_success(token, {"stopped": True, "cause": cause})


def _ended(item: dict[str, Any], view: TaskView) -> dict[str, Any]:
    return {
        "task_name": view.task_name,
        "mode": view.cfg.mode,
        "reason": view.finished,
        "status": view.status,
        "final_version": item.get("final_version", view.head_version),
        "final_sha256": item.get("final_sha256"),
        "final_key": keys.final_key(view.task_name),
    }


__all__ = ["StackConfig", "TaskNotFoundError", "resolve_stack", "start", "status", "stop"]
