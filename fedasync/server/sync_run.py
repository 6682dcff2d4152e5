"""Sync mode: a run of one round's new update records, accepted together (one read, one
round check), as `updates.decide_run` hands it over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.errors import FedAsyncError
from fedasync.core.items import verdict as v
from fedasync.core.messages import UpdateRecord
from fedasync.server import members, rounds
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.sync_plan import RunFacts, acceptance, plan_run
from fedasync.server.task_view import TaskView
from fedasync.server.update_check import iter_checked

log = structlog.get_logger()


def round_along(sks: Sequence[str]) -> list[str]:
    """What to read with the TASK item for a sync run: the run's round item and its
    updates, so deciding the run needs no other read. Only a guess (the round from the
    run's first key): the caller uses it only if the TASK item agrees."""
    round_id = keys.round_of_update_sk(sks[0]) if sks else None
    if round_id is None:
        return []
    return list(dict.fromkeys([keys.round_sk(round_id), *sks]))


async def accept_round_run(
    store: ServerStore, view: TaskView, sks: Sequence[str], read: dict[str, Any]
) -> int:
    """Sync: accept the run's leading updates for the open round, then check the round once.

    The facts are read once (`read`: items read with the TASK item, `round_along`,
    possibly none), the pure `sync_plan.plan_run` says which updates go on to their
    objects' checks, each acceptance is its own conditional write (independent,
    idempotent, written concurrently), then one ADD counts the run's accepted clients on
    the round item (`members.Tally`), and the round's items are queried only if that
    count says the round may close. Returns how many leading records the run decided.
    """
    round_id = view.head_version
    round_sk = keys.round_sk(round_id)
    if round_sk in read and set(sks) <= set(read):
        round_item, updates = read[round_sk] or {}, [read[sk] for sk in sks]
    else:
        round_item = await store.get_item(view.task_name, round_sk) or {}
        updates = await store.get_items(view.task_name, list(sks))
    # a stop is the one-by-one path's to record, with its reason
    plan = plan_run(_facts(view, round_item), updates)
    decided, accepted, _ = await _accept(store, view, plan.candidates)
    if not accepted:
        return decided
    for record in accepted:
        log.info(
            "update.accepted",
            task_name=view.task_name,
            client_id=record.client_id,
            sk=record.sk,
            round_id=round_id,
            num_examples=record.num_examples,
        )
    # the tally as read with the run, plus the run's word: only this handler counts (one
    # batch of a task at a time), so this is what the round item holds now
    now = members.tally_of(view.cfg, [v.accepted_by(r.client_id) for r in accepted])
    await members.count(store, view, round_id, now)
    await rounds.maybe_complete(store, view, round_id, tally=members.Tally.of(round_item).plus(now))
    return decided


async def accept_one(
    store: ServerStore, view: TaskView, item: dict[str, Any]
) -> dict[str, Any] | None:
    """The one-by-one path's sync acceptance: the same plan and checks as a run's, for one
    update. Raises the rejection (`updates.on_update` records it with its reason); None
    when a round closing meanwhile rejected the update first."""
    round_item = await store.get_item(view.task_name, keys.round_sk(view.head_version)) or {}
    plan = plan_run(_facts(view, round_item), [item])
    if plan.error is not None:
        raise plan.error
    _, accepted, error = await _accept(store, view, plan.candidates)
    if error is not None:
        raise error
    if not accepted:
        return None
    record = accepted[0]
    log.info("update.accepted", round_id=record.round_id, num_examples=record.num_examples)
    return v.accepted_as(item, view.head_version + 1)


def _facts(view: TaskView, round_item: dict[str, Any]) -> RunFacts:
    return RunFacts(
        view.cfg, view.head_version, rounds.is_sealed(round_item), view.status, view.finished
    )


async def _accept(
    store: ServerStore,
    view: TaskView,
    candidates: Sequence[tuple[UpdateRecord, dict[str, Any]]],
) -> tuple[int, list[UpdateRecord], FedAsyncError | None]:
    """Check the candidates' objects in order, writing each valid one's acceptance while
    the next object is read; stop at the first invalid one. (How many were valid, those
    whose verdict this call wrote, and why the first invalid one is not.)"""
    valid: list[UpdateRecord] = []
    writes: list[asyncio.Future[bool]] = []
    error: FedAsyncError | None = None
    base = await base_for_norm(store, view, candidates[0][0]) if candidates else None
    checked = iter_checked(store, view, [record for record, _ in candidates], base)
    try:
        async with contextlib.aclosing(checked):
            for record, update in candidates:
                try:
                    weights = await anext(checked)  # None: a large model, checked streamed
                except FedAsyncError as exc:
                    error = exc
                    break
                valid.append(record)
                if weights is not None:  # the round's close folds these moments later
                    CACHE.put(record.sha256, weights)
                verdict = acceptance(view.head_version, record, update, time.time())
                op = store.update_op(
                    view.task_name, record.sk, verdict, condition="attribute_not_exists(#verdict)"
                )
                writes.append(asyncio.ensure_future(store.update(op)))
    finally:
        written = await asyncio.gather(*writes)  # a failed write raises here: batch retried
    # a verdict not written: a round closing meanwhile rejected that update first
    return len(valid), [r for r, ok in zip(valid, written, strict=True) if ok], error


async def base_for_norm(store: ServerStore, view: TaskView, record: UpdateRecord) -> Any:
    if view.cfg.max_update_norm is None:
        return None
    from fedasync.core import codec

    return codec.decode(
        await store.get_object(keys.global_key(view.task_name, record.base_version))
    )
