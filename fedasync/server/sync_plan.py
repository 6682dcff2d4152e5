"""Sync: what a stream run of one round's updates may decide, as a pure function of the
facts read once (the TASK item's view, the ROUND item, the run's items).

`plan_run` decides the run's leading undecided updates: each is rejected with its reason
(the item, its sender, its round, the task's state) or goes on to its object's check, and
the run stops only at a vanished or decided item (the one-by-one path's). `acceptance`
and `rejection` are the verdicts a sync update gets, on either path.
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
from fedasync.server.async_plan import detail_of


@dataclass(frozen=True)
class RunFacts:
    """What a sync run is decided on, besides its own items."""

    cfg: TaskConfig
    round_id: int  # the open round: the head version
    sealed: bool  # the round's close has begun: it takes no more updates
    status: str | None
    finished: str | None


@dataclass(frozen=True)
class Step:
    """One update of the run as planned: a candidate for its object's check (`error` None),
    or a rejection with its reason (`record` None when the item did not parse)."""

    sk: str
    item: dict[str, Any]
    record: UpdateRecord | None = None
    error: FedAsyncError | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RunPlan:
    """The run's leading undecided updates, in order, each a candidate or a rejection, and
    why the run stops after them (None: it does not; 'absent' or 'decided': the record
    from there on is the one-by-one path's, which knows vanished and decided items)."""

    steps: tuple[Step, ...]
    stop: str | None = None

    @property
    def candidates(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.error is None)


def plan_run(facts: RunFacts, items: Sequence[Mapping[str, Any] | None]) -> RunPlan:
    steps: list[Step] = []
    for item in items:
        if item is None:
            return RunPlan(tuple(steps), "absent")
        if Verdict.from_item(item).decided:
            return RunPlan(tuple(steps), "decided")
        steps.append(_step(facts, dict(item)))
    return RunPlan(tuple(steps))


def _step(facts: RunFacts, item: dict[str, Any]) -> Step:
    sk, record = Verdict.from_item(item).sk, None
    try:
        record = parse_update_item(item)
        check_sender(record, facts.cfg)
        check_round(record, facts.round_id, facts.sealed)
        check_running(facts.status, facts.finished, record)
    except FedAsyncError as exc:
        return Step(sk, item, record, exc)
    return Step(sk, item, record)


def rejection(task_name: str, step: Step, error: FedAsyncError, now: float) -> dict[str, Any]:
    """The verdict on an update rejected with `error` (its reason, and whose update it was
    when the error does not say), with the item it was decided on."""
    detail = detail_of(error, task_name, step.sk, step.item, step.record)[:2000]
    return {
        **v.rejected(error.reason, detail, now, attributed=error.attributed),
        **verdicts.decided_on(step.item),
    }


def acceptance(
    round_id: int, record: UpdateRecord, item: Mapping[str, Any] | None, now: float
) -> dict[str, Any]:
    """The verdict on an update accepted into round `round_id` (its version: the next),
    with the record it was validated as (`verdicts.decided_on_record`)."""
    return {
        **v.accepted(applied_version=round_id + 1, decided_at=now),
        **verdicts.decided_on_record(record, item),
    }
