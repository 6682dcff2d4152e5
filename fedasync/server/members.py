"""Who is in a sync round: the updates it aggregates (claimed once), and the dead silos it
may close without."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import droppable, lapsed, round_complete
from fedasync.core.items import round as r
from fedasync.core.items import verdict as v
from fedasync.core.items.expressions import absent
from fedasync.core.items.round import ACCEPTED, SETTLED, RoundItem
from fedasync.core.items.verdict import Verdict
from fedasync.core.verdicts import decided_on
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def claim_members(
    store: ServerStore, view: TaskView, round_id: int, items: list[dict[str, Any]] | None = None
) -> tuple[list[str], dict[str, Any] | None]:
    """Fix once which updates the round aggregates, so every retry computes the same bytes.

    First the round is sealed: an accept that reads the round item from then on refuses
    the update (`closed_round`). An accept that read it before the seal was of an item
    that existed then, so the query after the seal finds it: if it has no verdict yet, a
    conditional rejection races the accept's conditional verdict and exactly one wins,
    so an update is accepted if and only if it is a member. `items`: the round's items as
    the stream handler (the only writer of acceptances) knows them now; else queried.

    Returns the members, and the round item as it is now when an earlier try claimed them
    (None when this call did)."""
    round_sk = keys.round_sk(round_id)
    seal = store.update_op(
        view.task_name,
        round_sk,
        r.seal(round_id),
        condition=absent(r.MEMBERS),
    )
    if await store.update(seal):
        if items is None:
            items = await store.query_prefix(view.task_name, f"{keys.UPDATE_PREFIX}{round_id:08d}#")
        items = [await _settle(store, view, round_id, item) for item in items]
        accepted = sorted(s.sk for i in items if (s := Verdict.from_item(i)).accepted)
        op = store.update_op(
            view.task_name,
            round_sk,
            r.claimed(accepted, round_id),
            condition=absent(r.MEMBERS),
        )
        if await store.update(op):
            return accepted, None
    current = await store.get_item(view.task_name, round_sk) or {}
    return list(RoundItem.from_item(current).members or ()), current


async def _settle(
    store: ServerStore, view: TaskView, round_id: int, item: dict[str, Any]
) -> dict[str, Any]:
    """A rostered client's undecided update in a sealed round: reject it as too late, unless
    its accept wins the race (then the item as that accept wrote it)."""
    sub = Verdict.from_item(item)
    if sub.decided or sub.client_id not in view.cfg.clients:
        return item  # decided, or a stranger's (never accepted; its own reason comes later)
    detail = (
        f"update item {sub.sk!r} from client {sub.client_id!r} for task "
        f"{view.task_name!r} was still undecided when round {round_id} closed"
    )
    verdict = {**v.rejected("closed_round", detail, time.time()), **decided_on(item)}
    op = store.update_op(view.task_name, sub.sk, verdict, condition=absent(v.VERDICT))
    if await store.update(op):
        log.warning("update.rejected", sk=sub.sk, reason="closed_round", detail=detail)
        return v.decided_as(item, verdict)
    return await store.get_item(view.task_name, sub.sk) or item


async def dead_undecided(
    store: ServerStore, view: TaskView, items: list[dict[str, Any]], decided: set[str]
) -> list[str]:
    """The undecided clients when every one is dead (heartbeat lapsed or `stopped`), none
    has an update on its way, and the quorum is met already; else none."""
    cfg = view.cfg
    undecided = sorted(set(cfg.clients) - decided)
    subs = [Verdict.from_item(i) for i in items]
    accepted = sum(1 for s in subs if s.accepted and s.client_id in cfg.clients)
    in_flight = {str(s.client_id) for s in subs} & set(undecided)
    if accepted < cfg.quorum or in_flight:
        return []  # cannot close early anyway, or an update is coming on the stream
    beats = await store.get_items(view.task_name, [keys.heartbeat_sk(c) for c in undecided])
    dead = lapsed(dict(zip(undecided, beats, strict=True)), time.time())
    return undecided if droppable(cfg, set(undecided), accepted, dead) else []


_BEATS_PER_READ = 25  # heartbeats read at a time while looking for a live undecided silo


@dataclass(frozen=True)
class Tally:
    """Which rostered clients have their word in the round (`verdicts.settles`), and which
    of them were accepted, as the round item counts them: only a hint of when to look.

    An over-count is harmless (the close re-derives everything from the round's verdicts,
    which a query reads); an under-count (a crash between a verdict and its ADD) only
    delays: the record's retry adds it again (an ADD to a set is idempotent), and every
    `check_round` decides on the query, never on the tally."""

    settled: frozenset[str] = frozenset()
    accepted: frozenset[str] = frozenset()

    @classmethod
    def of(cls, round_item: Mapping[str, Any] | None) -> Tally:
        item = RoundItem.from_item(round_item)
        return cls(item.settled, item.accepted)

    def plus(self, other: Tally) -> Tally:
        return Tally(self.settled | other.settled, self.accepted | other.accepted)


def tally_of(cfg: TaskConfig, items: Iterable[Mapping[str, Any]]) -> Tally:
    """The rostered clients whose word these decided items are (a squatter's junk under a
    victim's key is not: B4)."""
    own = [s for i in items if (s := Verdict.from_item(i)).settles and s.client_id in cfg.clients]
    return Tally(
        frozenset(str(s.client_id) for s in own),
        frozenset(str(s.client_id) for s in own if s.accepted),
    )


async def count(store: ServerStore, view: TaskView, round_id: int, new: Tally) -> None:
    """Add the clients' word to the round item's tally: one write, whatever the run's size.
    A round item not opened yet is left alone (the round's checks query it anyway)."""
    if not new.settled:
        return
    op = store.update_op(
        view.task_name,
        keys.round_sk(round_id),
        {},
        add_to_sets=r.tally(new.settled, new.accepted),
    )
    await store.update(op)


async def may_close(store: ServerStore, view: TaskView, tally: Tally) -> bool:
    """Worth querying the round: the tally has every client's word, or it has the quorum
    and no undecided silo shows a live heartbeat (read a few at a time, stopping at the
    first live one, so a round of live silos reads one small batch)."""
    cfg = view.cfg
    if round_complete(cfg, set(tally.settled)):
        return True
    accepted = len(tally.accepted & set(cfg.clients))
    if accepted < cfg.quorum or accepted == 0:
        return False
    undecided = sorted(set(cfg.clients) - tally.settled)
    now = time.time()
    for start in range(0, len(undecided), _BEATS_PER_READ):
        some = undecided[start : start + _BEATS_PER_READ]
        beats = await store.get_items(view.task_name, [keys.heartbeat_sk(c) for c in some])
        if lapsed(dict(zip(some, beats, strict=True)), now) != set(some):
            return False
    return True


__all__ = [
    "ACCEPTED",
    "SETTLED",
    "Tally",
    "claim_members",
    "count",
    "dead_undecided",
    "may_close",
    "tally_of",
]
