"""`stop`: end a task now, with its current global model as final.

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
from typing import Any

import structlog

from fedasync.aws.executions import SfnExecutions
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.errors import RegistryError
from fedasync.core.items import task as t
from fedasync.core.items.expressions import one_of
from fedasync.core.items.round import RoundItem
from fedasync.core.items.task import TaskItem
from fedasync.deployment import Deployment
from fedasync.ops.tasklookup import (
    describe_execution,
    execution_arn,
    notice_topics,
    task_item,
    task_view,
)
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()

STOPPED_REASON = "stopped"
_POLL_S = 0.2


async def _wait_token(store: ServerStore, view: TaskView, wait_s: float) -> str | None:
    """The token of the wait the execution is parked in, once the control handler stored it.

    async: `open_task` puts it on the TASK item; sync: `open_round` on the head's ROUND item.
    """
    sk = keys.TASK_SK if view.cfg.mode == "async" else keys.round_sk(view.head_version)
    deadline = time.monotonic() + wait_s
    while True:
        item = await store.get_item(view.task_name, sk)
        token = (
            TaskItem.from_item(view.task_name, item).token
            if sk == keys.TASK_SK and item is not None
            else RoundItem.from_item(item).token
        )
        if token or time.monotonic() >= deadline:
            return str(token) if token else None
        await asyncio.sleep(_POLL_S)


async def _wait_execution(aws: AwsContext, arn: str, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        execution = await describe_execution(aws, arn)
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
    topic_arn, shards = await notice_topics(aws, stack)
    where = stack.model_copy(update={"topic_arn": topic_arn, "topic_shards": shards})
    store = ServerStore(aws, where)
    item, view = await task_item(store, task_name)
    arn = await execution_arn(aws, stack, item)
    execution = await describe_execution(aws, arn)
    if execution["status"] not in ("RUNNING", "UNKNOWN") or (
        view.finished and execution["status"] == "UNKNOWN"
    ):
        return {**_ended(item, view), "how": "already_ended", "execution": execution}
    how = await _finish(aws, store, view, arn, wait_s)
    execution = await _wait_execution(aws, arn, wait_s)
    item = await store.get_task(task_name) or item
    log.info("task.stop", how=how, execution_status=execution["status"])
    return {**_ended(item, await task_view(store, task_name)), "how": how, "execution": execution}


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
    final = await task_view(store, view.task_name)
    cause = (
        f"task {view.task_name!r} stopped by the operator; the final model is version "
        f"{final.head_version} ({keys.final_key(view.task_name)})"
    )
    op = store.update_op(
        view.task_name,
        keys.TASK_SK,
        t.stopped(cause),
        condition=one_of(t.STATUS, ":starting", ":running"),
        condition_values={":starting": "STARTING", ":running": "RUNNING"},
    )
    await store.update(op)
    await SfnExecutions(aws).stop(arn, error="Stopped", cause=cause)
    if token is not None:
        await store.send_success(token, {"stopped": True, "cause": cause})


def _ended(item: dict[str, Any], view: TaskView) -> dict[str, Any]:
    task = TaskItem.from_item(view.task_name, item)
    return {
        "task_name": view.task_name,
        "mode": view.cfg.mode,
        "reason": view.finished,
        "status": view.status,
        "final_version": view.head_version if task.final_version is None else task.final_version,
        "final_sha256": task.final_sha256,
        "final_key": keys.final_key(view.task_name),
    }


__all__ = ["STOPPED_REASON", "stop"]
