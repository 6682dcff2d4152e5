"""One update record arrived on the stream: accept it exactly once, or reject it with its reason."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from fedasync.core import keys, verdicts
from fedasync.core.decisions import describe
from fedasync.core.errors import FedAsyncError, SchemaError
from fedasync.core.items import verdict as v
from fedasync.core.items.expressions import absent, all_of, equals
from fedasync.core.items.verdict import Verdict
from fedasync.server import async_effects, async_task, members, rounds, sync_run
from fedasync.server.async_plan import detail_of as _detail
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def on_update(
    store: ServerStore, task_name: str, sk: str, *, forged: Sequence[str] = ()
) -> str:
    """Returns the verdict ('accepted', 'rejected', or 'ignored' for a vanished item).

    `forged`: server-owned attributes the item already held when it was inserted (the
    stream's INSERT image); such a verdict is the client's own, never trusted.
    """
    inbox, decision = await store.submission(task_name, sk)
    if inbox is None and decision is None:
        log.warning("update.vanished", task_name=task_name, sk=sk)
        return "ignored"
    who = Verdict.from_item(inbox or decision or {}).client_id
    with bound_contextvars(task_name=task_name, client_id=who, sk=sk):
        if verdicts.resubmitted(inbox, decision):
            await _reopen(store, task_name, sk, decision or {})
            inbox, decision = await store.submission(task_name, sk)
        item = verdicts.merge(sk, inbox, decision) or {}
        if forged and not Verdict.from_item(item).decided:
            item = await _reject_forged(store, task_name, sk, item, forged)
        if (known := Verdict.from_item(item).verdict) is not None:
            await _after(store, task_name, item)
            return known
        decided: dict[str, Any] | None = None
        try:
            view = TaskView.from_item(task_name, await store.get_task(task_name))
        except FedAsyncError as exc:  # no task to decide on (absent, or its item unreadable)
            await _reject(
                store, task_name, sk, exc, _detail(exc, task_name, sk, item, None), item=item
            )
        else:
            with bound_contextvars(
                version=view.head_version, round_id=Verdict.from_item(item).round_id
            ):
                decided = await _decide(store, view, sk, item)
        # our own conditional write succeeded: the item is what we wrote, no need to re-read
        item = decided or await store.get_item(task_name, sk) or item
        await _after(store, task_name, item)
        return Verdict.from_item(item).verdict or "pending"


async def decide_run(store: ServerStore, task_name: str, sks: Sequence[str]) -> int:
    """Decide a run of one task's new update records (stream order) together.

    The same verdicts, bytes and effects as one `on_update` per record, with one TASK read
    and one round of effects for the run. Decides a prefix and returns its length: a
    rejection is a verdict of the run (`sync_plan.plan_run`, `async_task.absorb_run`); it
    stops before the first record that vanished or is decided already, and the caller
    hands the rest to `on_update`, one by one.
    """
    if len(sks) > async_task.MAX_RUN:
        return 0
    along = sync_run.round_along(sks)
    got = await store.get_items(task_name, [keys.TASK_SK, *along])
    if got[0] is None:
        return 0
    view = TaskView.from_item(task_name, got[0])
    if view.finished or view.status in ("SUCCEEDED", "FAILED"):
        return 0
    if view.cfg.mode == "async":
        return await async_task.absorb_run(store, view, list(sks))
    read = dict(zip(along, got[1:], strict=True))
    return await sync_run.accept_round_run(store, view, sks, read)


async def _decide(
    store: ServerStore, view: TaskView, sk: str, item: dict[str, Any]
) -> dict[str, Any] | None:
    """The item with its verdict (accepted, or rejected with its reason) when this call
    wrote it; None when another try did. The mode's plan parses and checks the item."""
    if view.cfg.mode == "async":
        return await async_task.absorb_update(store, view, sk, item)
    return await sync_run.decide_one(store, view, item)


async def _reject(
    store: ServerStore,
    task_name: str,
    sk: str,
    exc: FedAsyncError,
    detail: str,
    *,
    item: dict[str, Any],
) -> None:
    op = store.update_op(
        task_name,
        sk,
        {
            **v.rejected(exc.reason, detail[:2000], time.time(), attributed=exc.attributed),
            **verdicts.decided_on(item),
        },
        condition=absent(v.VERDICT),
    )
    await store.update(op)
    log.warning("update.rejected", reason=exc.reason, detail=detail)


async def _reject_forged(
    store: ServerStore, task_name: str, sk: str, item: dict[str, Any], forged: Sequence[str]
) -> dict[str, Any]:
    """Reject an undecided item that holds server attributes (a decided one stays decided:
    what an inbox item holds never changes a verdict, which lives in the server table)."""
    exc = SchemaError(
        f"update item {sk!r} from client {Verdict.from_item(item).client_id!r} for task {task_name!r} "
        f"was written with server-owned attribute(s) {list(forged)}; a client writes only "
        "its record"
    )
    verdict = {**v.rejected(exc.reason, exc.message, time.time()), **verdicts.decided_on(item)}
    if await store.update(store.update_op(task_name, sk, verdict, condition=absent(v.VERDICT))):
        log.warning("update.rejected", reason=exc.reason, detail=exc.message)
    return await store.get_item(task_name, sk) or item


async def _reopen(store: ServerStore, task_name: str, sk: str, decision: dict[str, Any]) -> None:
    """A new submission under a key whose last one was rejected (the inbox item changed):
    the rejection moves into `superseded`, conditionally on the digest it was taken on, so
    the new item is decided on its own. A squatter's junk thus costs its victim nothing."""
    last = Verdict.from_item(decision)
    history = [*last.superseded, verdicts.superseded_entry(decision)]
    op = store.update_op(
        task_name,
        sk,
        v.superseded(history),
        condition=all_of(equals(v.ITEM_DIGEST, ":digest"), equals(v.VERDICT, ":rejected")),
        condition_values={":digest": last.item_digest, ":rejected": v.REJECTED},
        remove=verdicts.REOPENED,
    )
    if await store.update(op):
        log.info("update.resubmitted", superseded=last.reason)


async def _after(store: ServerStore, task_name: str, item: dict[str, Any]) -> None:
    """Effects that follow a verdict; idempotent so a redelivered record may run them again."""
    task = await store.get_task(task_name)
    if task is None:
        return
    view = TaskView.from_item(task_name, task)
    sub = Verdict.from_item(item)
    if view.cfg.mode == "sync":
        round_id = sub.round_id
        if isinstance(round_id, int) and round_id == view.head_version and not view.finished:
            await _count_and_check(store, view, round_id, item)
        elif isinstance(round_id, int) and round_id == view.head_version - 1:
            await rounds.redo_closed(store, view, round_id)
    elif sub.accepted and view.finished:
        # a retry after a crash in finish_task: the callback may not have gone out
        await finish_task(store, task_name, view.finished, token=view.token)
    elif sub.accepted:
        await async_effects.after_accept(store, task_name, item, task=task)
    elif sub.rejected:
        await async_effects.after_reject(store, view, item)


async def _count_and_check(
    store: ServerStore, view: TaskView, round_id: int, item: dict[str, Any]
) -> None:
    """Count the verdict on the round item (again, for a redelivered record: a crash may
    have come between the verdict and its count; adding to a set twice is harmless), then
    check the round against its tally."""
    new = members.tally_of(view.cfg, [item])
    await members.count(store, view, round_id, new)
    round_item = await store.get_item(view.task_name, keys.round_sk(round_id))
    await rounds.maybe_complete(store, view, round_id, tally=members.Tally.of(round_item))


__all__ = ["decide_run", "describe", "on_update"]
