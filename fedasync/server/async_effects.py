"""Async mode's effects: the open task's go-ahead, and what follows an accepted or a
rejected update (heartbeat, notices, the stop). Idempotent: a retry runs them again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.asyncagg import stop_reason
from fedasync.core.items import task as t
from fedasync.core.items.expressions import absent
from fedasync.core.items.task import WAITING
from fedasync.core.items.verdict import Verdict
from fedasync.core.target import target_value
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def open_task(store: ServerStore, view: TaskView, token: str) -> None:
    """Keep the completion token server-side, then announce the current global model."""
    op = store.update_op(
        view.task_name,
        keys.TASK_SK,
        t.opened(token, time.time()),
        condition=absent(t.FINISHED),
    )
    if not await store.update(op):
        log.info("task.open_ignored", reason="finished")
        return
    await _go_ahead(store, view, view.cfg.clients)
    log.info("task.opened", version=view.head_version)


async def after_accept(
    store: ServerStore,
    task_name: str,
    item: dict[str, Any],
    task: dict[str, Any] | None = None,
    *,
    submitters: Collection[str] = (),
    view: TaskView | None = None,
) -> None:
    """Effects after an accepted update; safe to repeat (a retry after a crash runs them again).

    `task` is the TASK item if the caller read it after the verdict, `view` the task as
    the caller just committed it (else the TASK item is read here); `submitters`: the
    clients whose updates the caller accepted (default: the item's). The go-ahead goes to
    them and to the clients waiting after a rejection, not to every client: a silo that is
    training needs no notice (it takes the newest when it is done, and its own go-ahead
    comes when its update is absorbed), so a notice per update to each of N silos would be
    N messages to receive and delete per update for nothing.
    """
    if view is None:
        view = TaskView.from_item(task_name, task or await store.get_task(task_name))
    if view.finished:
        return
    effects: list[Awaitable[object]] = []
    if view.token:
        effects.append(store.send_heartbeat(view.token))
    sub = Verdict.from_item(item)
    if sub.applied_version == view.head_version and sub.seq == view.state.absorbed:
        # every accepted update is a go-ahead, also when the version stays (FedBuff
        # between buffer flushes): its silo trains again on the head
        recipients = set(submitters or [str(sub.client_id)]) | view.waiting
        # central DP, FedBuff: a silo in the buffer being filled waits for its flush (a
        # second update would be rejected); a flush owes its silos their go-ahead
        recipients = (recipients | view.dp_flushed) - set(view.state.buffer_clients)
        effects.append(_go_ahead(store, view, recipients))
    await asyncio.gather(*effects)
    metric = target_value(view.cfg, view.latest_metrics)
    reason = stop_reason(view.state, view.cfg, metric=metric, release_limit=view.dp_release_limit)
    if reason is not None:
        await finish_task(store, task_name, reason, token=view.token)


async def after_reject(store: ServerStore, view: TaskView, item: dict[str, Any]) -> None:
    """A silo whose update was rejected is owed a go-ahead: it is added to the TASK item's
    `waiting` set, served with the next accepted update's go-ahead and dropped from the set
    when an update of its own is accepted. Not a notice at once: the head may be the very
    model it trained on (a notice it would only find its own record for), and a publish
    per rejection is what a flood of stale updates can least afford. Idempotent."""
    client = Verdict.from_item(item).client_id
    if view.finished or view.cfg.mode != "async" or client not in view.cfg.clients:
        return
    if client in view.waiting:
        return
    op = store.update_op(view.task_name, keys.TASK_SK, {}, add_to_sets={WAITING: [client]})
    await store.update(op)
    log.info("update.go_ahead_deferred", task_name=view.task_name, client_id=client)


async def _go_ahead(store: ServerStore, view: TaskView, recipients: Collection[str]) -> None:
    rostered = tuple(c for c in view.cfg.clients if c in recipients)
    if rostered:
        await store.publish(view.notice(view.head_version, seq=view.state.absorbed), rostered)
