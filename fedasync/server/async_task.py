"""Async mode: one decision path for a batch of 1..n updates (FedAsync / FedBuff).

Load the facts once (`async_head.load_facts`), plan purely (`async_plan.plan`: every
verdict, rejections included), commit the plan once (the objects it made, then the TASK
counters and every verdict in one conditional transaction), then perform its effects
(`async_effects`). The stream's run and the one-by-one path both come here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog

from fedasync.core import codec, keys
from fedasync.core.codec import Weights
from fedasync.core.errors import GlobalRefusedError
from fedasync.core.items import task as t
from fedasync.core.items import verdict as v
from fedasync.core.items.expressions import absent, all_of, equals
from fedasync.core.items.task import WAITING
from fedasync.core.items.verdict import Verdict
from fedasync.core.privacy import central_dp
from fedasync.server import refused
from fedasync.server.async_effects import after_accept
from fedasync.server.async_head import Facts, load_facts
from fedasync.server.async_plan import Plan, plan
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()
# DynamoDB takes at most 100 items per transaction (the TASK item + one verdict each)
MAX_RUN = 99
# a run's objects are read before it is planned: beyond this many bytes the run stops (the
# rest is decided by the next batch), so memory stays at this plus one object at most
BATCH_BYTES = 64 * 1024 * 1024


class _ReleasedError(Exception):
    """A previous try released a version first (central DP, write-once): that release is
    the version; `releases` holds it and the ones this try wrote before it."""

    def __init__(self, releases: dict[int, Weights]) -> None:
        super().__init__(sorted(releases))
        self.releases = releases


async def decide(
    store: ServerStore, view: TaskView, batch: list[tuple[str, dict[str, Any]]]
) -> Plan | None:
    """Decide and commit `batch` (stream order, at most MAX_RUN undecided updates of the
    running async task `view`); the committed plan, or None when the commit lost a race
    (another try committed first, or the task moved on: nothing was decided)."""
    facts = await load_facts(store, view, batch[:MAX_RUN])
    for _ in range(len(facts.batch) + 1):
        decided = plan(facts)
        try:
            return decided if await _commit(store, decided) else None
        except _ReleasedError as done:  # plan again with that release as the version
            facts = _with_release(facts, done)
    raise RuntimeError(f"task {view.task_name!r}: the releases kept changing; retrying")


def _with_release(facts: Facts, done: _ReleasedError) -> Facts:
    return replace(facts, releases={**facts.releases, **done.releases})


async def _write(store: ServerStore, p: Plan) -> None:
    """The objects the plan made (immutable per key: a retry writes the same bytes); a
    central DP release only if no try wrote it first (`_ReleasedError` if one did)."""
    once, released = central_dp(p.head.view.cfg), {}
    for write in p.writes:
        if write.version is None or not once:
            await store.put_object(write.key, write.blob, write.sha)
            continue
        stored, stored_sha = await store.put_object_once(write.key, write.blob, write.sha)
        if stored_sha != write.sha:
            released[write.version] = codec.decode(stored, who=write.key)
            raise _ReleasedError(released)
        released[write.version] = p.head.produced[write.version]


async def _commit(store: ServerStore, p: Plan) -> bool:
    """The plan's objects, then the TASK counters and every verdict in one conditional
    transaction (all or nothing; the TASK item's condition holds the head's chain)."""
    head = p.head
    view = head.view
    await _write(store, p)
    if p.drops_committed is not None:  # a refused step dropped a buffer begun before
        dropped = await refused.buffered_sks(store, view)
        await refused.mark_discarded(store, view.task_name, dropped, p.drops_committed)
        t.add_discarded(head.values, dropped)
    accepted = {d.sub.record.client_id for d in p.accepted if d.sub.record is not None}
    ops = [
        store.update_op(view.task_name, d.sub.sk, d.written(), absent(v.VERDICT)) for d in p.decided
    ]
    if head.values:
        conditions = [equals(t.ABSORBED, ":expected"), absent(t.FINISHED)]
        expected: dict[str, Any] = {":expected": view.state.absorbed}
        if t.REFUSED in head.values:
            conditions.append(equals(t.BUFFERED, ":buffered"))
            expected[":buffered"] = view.state.buffered
        task_op = store.update_op(
            view.task_name,
            keys.TASK_SK,
            head.values,
            condition=all_of(*conditions),
            condition_values=expected,
            # accepted: no longer waiting for a go-ahead (see `after_reject`)
            delete_from_sets={WAITING: view.waiting & accepted},
        )
        ops.insert(0, task_op)
    if not ops or not await store.transact(ops):
        return False
    for sha, weights in head.fresh:
        CACHE.put(sha, weights)
    CACHE.committed(view.task_name, view.head_version, view.head_sha256)
    for version, sha in head.produced_sha.items():
        CACHE.committed(view.task_name, version, sha)
    _log(p)
    return True


def _log(p: Plan) -> None:
    view = p.head.view
    for d in p.decided:
        record, who = d.sub.record, Verdict.from_item(d.sub.item).client_id
        bound = {"task_name": view.task_name, "client_id": who, "sk": d.sub.sk}
        if d.out is not None and record is not None:
            log.info(
                "update.accepted",
                **bound,
                staleness=d.out.staleness,
                weight=round(d.out.weight, 6),
                version=d.out.state.version,
                advanced=d.out.advanced,
                seq=d.out.state.absorbed,
            )
            continue
        if isinstance(d.exc, GlobalRefusedError):
            entry = t.Refusal.in_values(p.head.values)
            log.warning(
                "global.refused",
                **bound,
                reason=d.exc.reason,
                version=entry.version if entry.version is not None else view.head_version,
                discarded=list(entry.updates[1:]),
            )
        said = Verdict.from_item(d.verdict)
        log.warning(
            "update.rejected", **bound, version=view.head_version, reason=said.reason,
            detail=said.detail,
        )  # fmt: skip


async def perform(store: ServerStore, p: Plan) -> None:
    """The committed plan's effects: the silos its rejections left owed a go-ahead join
    `waiting` (`after_reject`), then the go-ahead, heartbeat and stop of its accepts."""
    view, head = p.head.view, p.head
    submitters = {d.sub.record.client_id for d in p.accepted if d.sub.record is not None}
    owed = sorted(p.waiting - (view.waiting - submitters))  # the commit dropped submitters
    if owed:
        op = store.update_op(view.task_name, keys.TASK_SK, {}, add_to_sets={WAITING: owed})
        await store.update(op)
        for client in owed:
            log.info("update.go_ahead_deferred", task_name=view.task_name, client_id=client)
    accepted = p.accepted
    if not accepted:
        return
    after = replace(
        view,
        head_version=head.state.version,
        head_sha256=head.head_sha,
        head_size=t.head_size_in(head.values, view.head_size),
        state=head.state,
        latest_metrics=head.latest,
        waiting=p.waiting_at_accept,
        recent_norms=head.recent_norms,
        dp_flushed=frozenset(head.flushed),
    )
    last = accepted[-1]
    item = v.decided_as(last.sub.item, last.verdict)
    await after_accept(store, view.task_name, item, view=after, submitters=submitters)


async def absorb_run(store: ServerStore, view: TaskView, sks: list[str]) -> int:
    """Decide a run of one async task's new update records (stream order) with one commit
    and one round of effects; how many it decided (a prefix: it stops before a record
    that is decided already or vanished, which `on_update` handles, and after an update
    that meets a stop condition). `view`: a running task (`updates.decide_run` checks)."""
    if view.cfg.mode != "async":
        return 0
    batch: list[tuple[str, dict[str, Any]]] = []
    claimed = 0  # the objects' bytes the batch holds in memory at once (as their records say)
    for sk, item in zip(sks, await store.get_items(view.task_name, sks), strict=True):
        if item is None or Verdict.from_item(item).decided or (batch and claimed > BATCH_BYTES):
            break
        batch.append((sk, item))
        size = Verdict.from_item(item).size_bytes
        claimed += size if isinstance(size, int) and size > 0 else view.cfg.max_model_bytes
    if not batch:
        return 0
    committed = await decide(store, view, batch)
    if committed is None:
        return 0
    log.info("update.run_committed", task_name=view.task_name, updates=len(committed.decided))
    await perform(store, committed)
    return len(committed.decided)


async def absorb_update(
    store: ServerStore, view: TaskView, sk: str, item: dict[str, Any]
) -> dict[str, Any] | None:
    """One update, a batch of one through `decide`: the decided item, or None when another
    try decided it (its effects are the caller's, `updates._after`, which a redelivery
    runs again)."""
    committed = await decide(store, view, [(sk, item)])
    if committed is not None and committed.decided:
        return v.decided_as(item, committed.decided[0].verdict)
    if Verdict.from_item(await store.get_item(view.task_name, sk) or {}).decided:
        return None
    # The task moved on under us: the stream redelivers and the next attempt recomputes
    # against the new head.
    raise RuntimeError(
        f"update item {sk!r} of task {view.task_name!r}: commit lost a race with another "
        "writer; retrying"
    )
