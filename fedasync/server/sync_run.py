"""Sync mode: a run of one round's new update records, decided together (one read, one
round check), as `updates.decide_run` hands it over; and one record, the same way, as
`updates.on_update` does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.errors import FedAsyncError
from fedasync.core.items import verdict as v
from fedasync.core.items.expressions import absent
from fedasync.core.items.round import RoundItem
from fedasync.core.items.verdict import Verdict
from fedasync.core.messages import UpdateRecord
from fedasync.server import members, rounds
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.sync_plan import RunFacts, Step, acceptance, plan_run, rejection
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
    """Sync: decide the run's leading updates for the open round, then check the round once.

    The facts are read once (`read`: items read with the TASK item, `round_along`; read
    here only when the TASK item's round is not the one guessed), the pure
    `sync_plan.plan_run` rejects what fails its checks and passes the rest to their
    objects' checks, each verdict is its own conditional write (independent, idempotent,
    written concurrently), then one ADD counts the run's word on the round item
    (`members.Tally`), and the round's items are queried only if that count says the
    round may close. Returns how many leading records the run decided."""
    round_id = view.head_version
    round_sk = keys.round_sk(round_id)
    if round_sk in read and set(sks) <= set(read):
        round_item, updates = read[round_sk], [read[sk] for sk in sks]
    else:
        round_item = await store.get_item(view.task_name, round_sk)
        updates = await store.get_items(view.task_name, list(sks))
    decided = await decide(store, view, round_item, updates)
    if not decided.written:
        return decided.count
    # the tally as read with the run, plus the run's word: only this handler counts (one
    # batch of a task at a time), so this is what the round item holds now
    now = members.tally_of(view.cfg, decided.written)
    await members.count(store, view, round_id, now)
    await rounds.maybe_complete(store, view, round_id, tally=members.Tally.of(round_item).plus(now))
    return decided.count


async def decide_one(
    store: ServerStore, view: TaskView, item: dict[str, Any]
) -> dict[str, Any] | None:
    """The one-by-one path's sync decision: the same plan, checks and verdicts as a run's,
    for one update. The item with the verdict this call wrote; None when another decision
    (a round closing meanwhile) was written first. Its effects are the caller's."""
    round_item = await store.get_item(view.task_name, keys.round_sk(view.head_version))
    decided = await decide(store, view, round_item, [item])
    return decided.written[0] if decided.written else None


@dataclass(frozen=True)
class Decided:
    count: int  # how many leading items the plan decided (the run stops after them)
    written: list[dict[str, Any]]  # those whose verdict this call wrote, with it


async def decide(
    store: ServerStore,
    view: TaskView,
    round_item: dict[str, Any] | None,
    items: Sequence[dict[str, Any] | None],
) -> Decided:
    """Plan `items` against the round, check the candidates' objects, write every verdict."""
    plan = plan_run(_facts(view, round_item), items)
    errors = await _check(store, view, plan.candidates)
    now = time.time()
    verdicts: list[tuple[Step, dict[str, Any]]] = []
    for step in plan.steps:
        error = step.error or errors.get(step.sk)
        if error is not None:
            verdicts.append((step, rejection(view.task_name, step, error, now)))
        else:
            assert step.record is not None
            verdicts.append((step, acceptance(view.head_version, step.record, step.item, now)))
    ops = [
        store.update_op(view.task_name, step.sk, verdict, condition=absent(v.VERDICT))
        for step, verdict in verdicts
    ]
    done = await asyncio.gather(*(store.update(op) for op in ops))
    # a verdict not written: a round closing meanwhile rejected that update first
    written = [(s, verdict) for (s, verdict), ok in zip(verdicts, done, strict=True) if ok]
    for step, verdict in written:
        _log(view, step, verdict)
    return Decided(len(plan.steps), [v.decided_as(s.item, verdict) for s, verdict in written])


def _log(view: TaskView, step: Step, verdict: dict[str, Any]) -> None:
    said, record = Verdict.from_item(verdict), step.record
    who = record.client_id if record is not None else Verdict.from_item(step.item).client_id
    bound = {"task_name": view.task_name, "client_id": who, "sk": step.sk}
    if said.accepted and record is not None:
        log.info("update.accepted", **bound, round_id=view.head_version,
                 num_examples=record.num_examples)  # fmt: skip
    else:
        log.warning("update.rejected", **bound, reason=said.reason, detail=said.detail)


def _facts(view: TaskView, round_item: dict[str, Any] | None) -> RunFacts:
    return RunFacts(
        view.cfg, view.head_version, RoundItem.from_item(round_item).is_sealed, view.status,
        view.finished,
    )  # fmt: skip


async def _check(
    store: ServerStore, view: TaskView, candidates: Sequence[Step]
) -> dict[str, FedAsyncError]:
    """Check the candidates' objects in order (a few read ahead); the error of each invalid
    one by sort key. A valid small model is kept for the round's close, moments later."""
    errors: dict[str, FedAsyncError] = {}
    rest = [s for s in candidates if s.record is not None]
    base = await base_for_norm(store, view, rest[0].record) if rest[:1] and rest[0].record else None
    while rest:
        records = [s.record for s in rest if s.record is not None]
        checked = iter_checked(store, view, records, base)
        async with contextlib.aclosing(checked):
            for position, step in enumerate(rest):
                assert step.record is not None
                try:
                    weights = await anext(checked)  # None: a large model, checked streamed
                except FedAsyncError as exc:
                    errors[step.sk] = exc
                    rest = rest[position + 1 :]  # the checks go on after it
                    break
                if weights is not None:
                    CACHE.put(step.record.sha256, weights)
            else:
                rest = []
    return errors


async def base_for_norm(store: ServerStore, view: TaskView, record: UpdateRecord) -> Any:
    if view.cfg.max_update_norm is None and view.cfg.update_encoding is None:
        return None
    from fedasync.core import codec

    return codec.decode(
        await store.get_object(keys.global_key(view.task_name, record.base_version))
    )
