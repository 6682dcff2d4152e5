"""Control messages from the state machine's wait states: open/close rounds, open/finalize tasks."""

from __future__ import annotations

import structlog
from structlog.contextvars import bound_contextvars

from fedasync.core.messages import ControlMessage
from fedasync.server import async_task, rounds
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def on_control(store: ServerStore, msg: ControlMessage) -> None:
    with bound_contextvars(task_name=msg.task_name, round_id=msg.round_id, kind=msg.kind):
        view = TaskView.from_item(msg.task_name, await store.get_task(msg.task_name))
        if msg.kind == "open_round":
            await rounds.open_round(store, view, _round(msg), msg.task_token)
        elif msg.kind == "check_round":
            await rounds.check_round(store, view, _round(msg), msg.task_token)
        elif msg.kind == "close_round":
            await rounds.close_round(
                store, view, _round(msg), token=msg.task_token, at_deadline=True
            )
        elif msg.kind == "open_task":
            await async_task.open_task(store, view, msg.task_token)
        else:
            await finish_task(store, msg.task_name, msg.reason or "timeout", token=msg.task_token)
        log.info("control.handled")


def _round(msg: ControlMessage) -> int:
    if msg.round_id is None:
        raise ValueError(f"{msg.kind} for task {msg.task_name!r} has no round_id")
    return msg.round_id
