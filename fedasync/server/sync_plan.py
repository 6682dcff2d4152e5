"""Sync: what a stream run of one round's updates may decide, as a pure function of the
facts read once (the TASK item's view, the ROUND item, the run's items).

`plan_run` says which leading updates go on to their objects' checks and where the run
stops (the record from there on is the one-by-one path's, which records its reason);
`acceptance` is the one verdict an accepted sync update gets, on either path.
No boto, no clock, no logging: `sync_run` reads the facts and performs the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedasync.core import verdicts
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import check_round, check_running, check_sender, parse_update_item
from fedasync.core.errors import FedAsyncError
from fedasync.core.items import verdict as v
from fedasync.core.items.verdict import Verdict
from fedasync.core.messages import UpdateRecord


@dataclass(frozen=True)
class RunFacts:
    """What a sync run is decided on, besides its own items."""

    cfg: TaskConfig
    round_id: int  # the open round: the head version
    sealed: bool  # the round's close has begun: it takes no more updates
    status: str | None
    finished: str | None


@dataclass(frozen=True)
class RunPlan:
    """The run's leading updates that passed every check but their objects', in order, and
    why the run stops after them (None: it does not; else 'absent', 'decided', or the
    reason the one-by-one path will record)."""

    candidates: tuple[tuple[UpdateRecord, dict[str, Any]], ...]
    stop: str | None = None
    error: FedAsyncError | None = field(default=None, compare=False)  # the stop's, if any


def plan_run(facts: RunFacts, items: Sequence[Mapping[str, Any] | None]) -> RunPlan:
    candidates: list[tuple[UpdateRecord, dict[str, Any]]] = []
    for item in items:
        if item is None:
            return RunPlan(tuple(candidates), "absent")
        if Verdict.from_item(item).decided:
            return RunPlan(tuple(candidates), "decided")
        try:
            record = parse_update_item(item)
            check_sender(record, facts.cfg)
            check_round(record, facts.round_id, facts.sealed)
            check_running(facts.status, facts.finished, record)
        except FedAsyncError as exc:
            return RunPlan(tuple(candidates), exc.reason, exc)
        candidates.append((record, dict(item)))
    return RunPlan(tuple(candidates))


def acceptance(
    round_id: int, record: UpdateRecord, item: Mapping[str, Any] | None, now: float
) -> dict[str, Any]:
    """The verdict on an update accepted into round `round_id` (its version: the next),
    with the record it was validated as (`verdicts.decided_on_record`)."""
    return {
        **v.accepted(applied_version=round_id + 1, decided_at=now),
        **verdicts.decided_on_record(record, item),
    }
