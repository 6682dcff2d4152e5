"""Sync mode: a run of one round's new update records, accepted together (one read, one
round check), as `updates.decide_run` hands it over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog

from fedasync.core import keys, verdicts
from fedasync.core.decisions import (
    check_round,
    check_running,
    check_sender,
    parse_update_item,
)
from fedasync.core.errors import FedAsyncError
from fedasync.core.messages import UpdateRecord
from fedasync.server import rounds
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView
from fedasync.server.update_check import iter_checked

log = structlog.get_logger()


def round_along(task_name: str, sks: Sequence[str]) -> list[str]:
    """What to read with the TASK item for a sync run, when a warm container knows the
    task's roster: the round item and every rostered client's update in the run's round,
    so the run needs no other read (nor a query) to decide and to see the round complete.
    Only a guess (the round from the run's keys, the roster from an earlier read): the
    caller uses it only if the TASK item agrees."""
    roster = CACHE.roster(task_name)
    round_id = keys.round_of_update_sk(sks[0]) if sks else None
    if roster is None or round_id is None or len(roster) + len(sks) > _ROUND_READ_MAX:
        return []
    expected = [keys.update_sk(client, "", round_id) for client in roster]
    return list(dict.fromkeys([keys.round_sk(round_id), *expected, *sks]))


_ROUND_READ_MAX = 98  # with TASK and ROUND: one BatchGetItem (100 keys)


async def accept_round_run(
    store: ServerStore, view: TaskView, sks: Sequence[str], read: dict[str, Any]
) -> int:
    """Sync: accept the run's leading updates for the open round, then check the round once.

    Each verdict is its own conditional write (independent, idempotent), written
    concurrently; the round closes (or not) exactly as after the run's last verdict.
    `read`: items read with the TASK item (`round_along`), possibly none.
    """
    round_id = view.head_version
    round_sk = keys.round_sk(round_id)
    expected = [keys.update_sk(c, "", round_id) for c in view.cfg.clients]
    whole = round_sk in read and set(expected) <= set(read) and set(sks) <= set(read)
    if whole:
        round_item, updates = read[round_sk] or {}, [read[sk] for sk in sks]
    else:
        round_item = await store.get_item(view.task_name, round_sk) or {}
        updates = await store.get_items(view.task_name, list(sks))
    claimed = rounds.is_sealed(round_item)
    candidates: list[tuple[UpdateRecord, dict[str, Any]]] = []
    for update in updates:
        if update is None or update.get("verdict"):
            break
        try:
            record = parse_update_item(update)
            check_sender(record, view.cfg)
            check_round(record, view.head_version, claimed)
            check_running(view.status, view.finished, record)
        except FedAsyncError:
            break  # the one-by-one path records the rejection with its reason
        candidates.append((record, update))
    accepted: list[tuple[UpdateRecord, dict[str, Any]]] = []
    writes: list[asyncio.Future[bool]] = []
    verdict: dict[str, Any] = {
        "verdict": "accepted",
        "applied_version": round_id + 1,
        "decided_at": time.time(),
    }
    base = await base_for_norm(store, view, candidates[0][0]) if candidates else None
    checked = iter_checked(store, view, [record for record, _ in candidates], base)
    try:
        async with contextlib.aclosing(checked):
            for record, update in candidates:
                try:
                    weights = await anext(checked)  # None: a large model, checked streamed
                except FedAsyncError:
                    break
                accepted.append((record, update))
                if weights is not None:  # the round's close folds these moments later
                    CACHE.put(record.sha256, weights)
                # written while the next object is read: every earlier update is valid too
                op = store.update_op(
                    view.task_name,
                    record.sk,
                    {**verdict, **verdicts.decided_on_record(record, update)},
                    condition="attribute_not_exists(#verdict)",
                )
                writes.append(asyncio.ensure_future(store.update(op)))
    finally:
        written = await asyncio.gather(*writes)  # a failed write raises here: batch retried
    decided = len(accepted)
    # a verdict not written: a round closing meanwhile rejected that update first
    accepted = [pair for pair, ok in zip(accepted, written, strict=True) if ok]
    if not accepted:
        return decided
    for record, _ in accepted:
        log.info(
            "update.accepted",
            task_name=view.task_name,
            client_id=record.client_id,
            sk=record.sk,
            round_id=round_id,
            num_examples=record.num_examples,
        )
    # verdicts leave the TASK item as it was read: no need to read it again
    if not whole or len(accepted) < decided:
        await rounds.maybe_complete(store, view, round_id)
        return decided
    # The round as it stands: its items as read, with the verdicts just written. Only
    # this handler accepts (one batch of a task at a time), and every verdict of the run
    # was written (no close rejected one first), so this is what a query would find now
    # of the accepted; an item inserted since has no verdict and decides nothing.
    now = {sk: read[sk] for sk in expected if read[sk] is not None}
    now.update({record.sk: {**update, **verdict} for record, update in accepted})
    await rounds.maybe_complete(
        store, view, round_id, items=list(now.values()), round_item=round_item
    )
    return decided


async def base_for_norm(store: ServerStore, view: TaskView, record: UpdateRecord) -> Any:
    if view.cfg.max_update_norm is None:
        return None
    from fedasync.core import codec

    return codec.decode(
        await store.get_object(keys.global_key(view.task_name, record.base_version))
    )
