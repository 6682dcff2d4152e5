"""Operator commands on a running deployment: start, inspect and stop a task.

The same code reaches the embedded stack and AWS; only `Deployment.endpoint_url` and
the credentials differ. Resource names come from `Deployment(prefix)` (what the embedded
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
- retryable: while the execution runs, a stop completes what an earlier one (or the
  server's own finish) could not, keeping the final version it chose. A final version
  whose object no longer matches its recorded SHA-256 is corrupt: nothing is published,
  and the error names the object and what the stop waits for (its original bytes).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.executions import SfnExecutions
from fedasync.aws.notices import find_topics
from fedasync.aws.queues import SqsQueues
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.codec import Array
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, RegistryError, TaskNotFoundError
from fedasync.core.evals import eval_means
from fedasync.deployment import Deployment
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView
from fedasync.server.tasks import (
    attempt_execution_name,
    current_execution_arn,
    resume_task,
    start_task,
)

log = structlog.get_logger()

STOPPED_REASON = "stopped"
_POLL_S = 0.2


def resolve_stack(
    *, endpoint_url: str | None, prefix: str, region: str | None, stack_config: Path | None
) -> Deployment:
    """Names from the stack JSON if given, else derived from the prefix."""
    if stack_config is not None:
        return Deployment.load(stack_config, endpoint_url, region)
    return Deployment(prefix=prefix, endpoint_url=endpoint_url, region=region or "us-east-1")


def _store(aws: AwsContext, stack: Deployment) -> ServerStore:
    # the topic is only needed by finish_task (final notice); look it up lazily below
    return ServerStore(aws, stack)


async def _state_machine_arn(aws: AwsContext, stack: Deployment) -> str:
    if stack.state_machine_arn:
        return stack.state_machine_arn
    name = stack.state_machine_name
    found = await SfnExecutions(aws).find_state_machine(name)
    if found is not None:
        return found
    raise ConfigError(
        f"no state machine named {name!r} at {stack.endpoint_url or 'AWS'} "
        f"(region {stack.region}); is the stack with prefix {stack.prefix!r} up?"
    )


async def _topics(aws: AwsContext, stack: Deployment) -> tuple[str, int]:
    """Shard 0's topic ARN and the number of shards: from the stack config, else found
    among the account's topics by name (`{prefix}-global-model-ready` and its `-{i}`)."""
    if stack.topic_arn and "topic_shards" in stack.model_fields_set:
        return stack.topic_arn, stack.topic_shards
    name = stack.topic_name
    found = await find_topics(aws, name)
    if 0 not in found:
        raise ConfigError(
            f"no topic named {name!r} at {stack.endpoint_url or 'AWS'} "
            f"(region {stack.region}); is the stack with prefix {stack.prefix!r} up?"
        )
    return stack.topic_arn or found[0], max(found) + 1


async def _execution_arn(aws: AwsContext, stack: Deployment, item: dict[str, Any]) -> str:
    """The execution of the task's current attempt: the one the TASK item records, unless a
    resume has started a newer attempt that has not recorded itself yet."""
    recorded = str(item.get("execution_arn") or "")
    if recorded.endswith(f":{attempt_execution_name(item)}"):
        return recorded
    return current_execution_arn(await _state_machine_arn(aws, stack), item)


async def _view(store: ServerStore, task_name: str) -> TaskView:
    return TaskView.from_item(task_name, await store.get_task(task_name))


async def _task(store: ServerStore, task_name: str) -> tuple[dict[str, Any], TaskView]:
    """The TASK item and its view; `TaskNotFoundError` names the task when it is absent."""
    item = await store.get_task(task_name)
    if item is None:
        raise TaskNotFoundError(f"task {task_name!r} does not exist in table {store.where.table!r}")
    return item, TaskView.from_item(task_name, item)


async def clients_without_queue(aws: AwsContext, stack: Deployment, cfg: TaskConfig) -> list[str]:
    """The task's clients that have no queue in the deployed stack (their notices would go
    nowhere, and their rounds could never fill): from the stack config's queue list when it
    has one, else by asking SQS for each client's queue by name."""
    if stack.client_queue_urls:
        return [c for c in cfg.clients if c not in stack.client_queue_urls]
    queues = SqsQueues(aws)

    async def missing(client_id: str) -> bool:
        return await queues.url_of(stack.client_queue_name(client_id)) is None

    found = await asyncio.gather(*(missing(c) for c in cfg.clients))
    return [c for c, gone in zip(cfg.clients, found, strict=True) if gone]


async def start(
    aws: AwsContext, stack: Deployment, cfg: TaskConfig, initial: dict[str, Array]
) -> dict[str, Any]:
    """Create the task and start its execution; the same config again returns the same ARN.
    Refused (`ConfigError`, nothing created) if a client of the task has no queue."""
    unknown = await clients_without_queue(aws, stack, cfg)
    if unknown:
        raise ConfigError(
            f"task {cfg.task_name!r} names client(s) with no queue in stack "
            f"{stack.prefix!r}: {', '.join(unknown)}; add them to the stack's clients "
            "(infra/clients.yaml and `cdk deploy`, or `fedasync local up --clients`)"
        )
    machine = await _state_machine_arn(aws, stack)
    arn = await start_task(_store(aws, stack), machine, cfg, initial)
    log.info("task.started", task_name=cfg.task_name, execution_arn=arn)
    return {"task_name": cfg.task_name, "mode": cfg.mode, "execution_arn": arn}


async def resume(aws: AwsContext, stack: Deployment, task_name: str) -> dict[str, Any]:
    """Start the task's next attempt (see `fedasync.server.tasks.resume_task`)."""
    out = await resume_task(_store(aws, stack), await _state_machine_arn(aws, stack), task_name)
    log.info("task.resumed", task_name=task_name, attempt=out["attempt"])
    return out


async def _execution(aws: AwsContext, arn: str) -> dict[str, Any]:
    try:
        desc = await SfnExecutions(aws).describe(arn)
    except ClientError as exc:
        return {"arn": arn, "status": "UNKNOWN", "error": str(exc)}
    return {
        "arn": arn,
        "status": desc.status,
        "started": desc.started.isoformat() if desc.started else None,
        "stopped": desc.stopped.isoformat() if desc.stopped else None,
        "error": desc.error,
        "cause": desc.cause,
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
        "discarded": sum(1 for i in items if i.get("discarded")),
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
    aws: AwsContext, stack: Deployment, task_name: str, *, now: float | None = None
) -> dict[str, Any]:
    """Mode, version/round, alive clients, update verdicts and the execution, as data."""
    store = _store(aws, stack)
    item, view = await _task(store, task_name)
    cfg, now = view.cfg, time.time() if now is None else now
    arn = await _execution_arn(aws, stack, item)
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
        # the last new global model refused before commit (server/refused.py), if any
        "global_refused": item.get("global_refused"),
        "attempt": view.attempt,
        "attempts": [dict(a) for a in item.get("attempts") or []],
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
    updates = await store.query_prefix(task_name, keys.UPDATE_PREFIX)
    out["updates"] = _updates(updates)
    # per round (sync) / version (async): the example-weighted mean of each eval_* metric
    out["evaluation"] = eval_means(updates)
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
    aws: AwsContext, stack: Deployment, task_name: str, *, wait_s: float = 30.0
) -> dict[str, Any]:
    """End the task with its current global model as final (see the module docstring).

    Retryable until it completes: while the execution runs, every stop does what is left
    (the decision taken by an earlier stop, or by the server itself, stands). Stopping a
    task whose execution has ended reports how it ended.
    """
    topic_arn, shards = await _topics(aws, stack)
    where = stack.model_copy(update={"topic_arn": topic_arn, "topic_shards": shards})
    store = ServerStore(aws, where)
    item, view = await _task(store, task_name)
    arn = await _execution_arn(aws, stack, item)
    execution = await _execution(aws, arn)
    if execution["status"] not in ("RUNNING", "UNKNOWN") or (
        view.finished and execution["status"] == "UNKNOWN"
    ):
        return {**_ended(item, view), "how": "already_ended", "execution": execution}
    how = await _finish(aws, store, view, arn, wait_s)
    execution = await _wait_execution(aws, arn, wait_s)
    item = await store.get_task(task_name) or item
    log.info("task.stop", how=how, execution_status=execution["status"])
    return {**_ended(item, await _view(store, task_name)), "how": how, "execution": execution}


async def _finish(
    aws: AwsContext, store: ServerStore, view: TaskView, arn: str, wait_s: float
) -> str:
    """The stop's steps (decide, publish the final model, end the wait); how it ended the
    wait. A task finished before (an earlier stop that could not complete, or the server's
    own stop) is completed with the wait's token if there is one, without waiting for one."""
    token = await _wait_token(store, view, 0 if view.finished else wait_s)
    reason = view.finished or STOPPED_REASON
    try:
        await finish_task(store, view.task_name, reason, token=token)
    except RegistryError as exc:
        raise type(exc)(
            f"{exc.message}; the stop is not complete and the execution keeps running: "
            f"run `fedasync task stop {view.task_name}` again once the object is restored",
            reason=exc.reason,
        ) from exc
    if token is not None:
        return "resumed" if view.finished else "callback"
    if reason != STOPPED_REASON:
        return "resumed"  # the server's own finish: its execution ends by itself
    await _abort(aws, store, view, arn, token)
    return "stop_execution"


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
    await SfnExecutions(aws).stop(arn, error="Stopped", cause=cause)
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


__all__ = ["Deployment", "TaskNotFoundError", "resolve_stack", "start", "status", "stop"]
