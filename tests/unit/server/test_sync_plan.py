"""A sync stream run's plan, pure (`fedasync.server.sync_plan`), and the round item's
tally of its clients' word (`fedasync.server.members`): values in, values out."""

from __future__ import annotations

from typing import Any

import pytest

from fedasync.core.config import TaskConfig
from fedasync.server.members import Tally, tally_of
from fedasync.server.sync_plan import RunFacts, RunPlan, acceptance, plan_run, rejection

CLIENTS = ("a", "b", "c")
SHA = "ab" * 32


def cfg() -> TaskConfig:
    return TaskConfig.parse({"task_name": "t", "clients": list(CLIENTS), "rounds": 3})


def item(client: str, round_id: int = 1, **over: Any) -> dict[str, Any]:
    """An update item as a silo writes it for round `round_id`."""
    return {
        "task_name": "t",
        "sk": f"UPDATE#{round_id:08d}#{client}",
        "kind": "update",
        "client_id": client,
        "update_id": f"u-{client}",
        "base_version": round_id,
        "round_id": round_id,
        "s3_key": f"t/local/{client}/{round_id}/u-{client}.safetensors",
        "sha256": SHA,
        "size_bytes": 10,
        "num_examples": 5,
        **over,
    }


def facts(*, sealed: bool = False, finished: str | None = None) -> RunFacts:
    return RunFacts(cfg(), round_id=1, sealed=sealed, status="RUNNING", finished=finished)


def clients_of(plan: RunPlan) -> list[str]:
    """The candidates' clients, in order."""
    return [str(step.item["client_id"]) for step in plan.candidates]


def rejections(plan: RunPlan) -> list[tuple[str, str]]:
    """(client, reason) of each rejected update, in order."""
    return [(str(s.item["client_id"]), s.error.reason) for s in plan.steps if s.error is not None]


def test_a_run_of_valid_updates_goes_on_whole_to_its_objects() -> None:
    # GIVEN the open round 1 and every client's update WHEN the run is planned
    plan = plan_run(facts(), [item("a"), item("b"), item("c")])
    # THEN every update is a candidate, in order, and the run does not stop
    assert clients_of(plan) == ["a", "b", "c"]
    assert plan.stop is None


@pytest.mark.parametrize(
    ("bad", "stop"),
    [(None, "absent"), (item("b", verdict="accepted"), "decided")],
    ids=["vanished", "decided"],
)
def test_a_run_stops_before_an_update_the_one_by_one_path_must_judge(
    bad: dict[str, Any] | None, stop: str
) -> None:
    # GIVEN a run whose second update is absent or decided already
    # WHEN it is planned
    plan = plan_run(facts(), [item("a"), bad, item("c")])
    # THEN only the first goes on, and the stop names why (the later valid one waits)
    assert clients_of(plan) == ["a"]
    assert len(plan.steps) == 1
    assert plan.stop == stop


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (item("x", s3_key="t/local/x/1/u.safetensors"), "unknown_client"),
        (item("b", s3_key="t/local/a/1/u-b.safetensors"), "spoofed_key"),
        (item("b", round_id=0, base_version=0), "closed_round"),
        (item("b", round_id=2, base_version=2), "future_round"),
        (item("b", seq=7), "schema"),
    ],
    ids=["stranger", "spoofed", "late", "early", "forged"],
)
def test_an_invalid_update_is_a_rejection_of_the_run_and_the_run_goes_on(
    bad: dict[str, Any], reason: str
) -> None:
    # GIVEN a run whose second update is invalid
    # WHEN it is planned
    plan = plan_run(facts(), [item("a"), bad, item("c")])
    # THEN it is rejected with its reason, and the updates around it go on to their objects
    assert rejections(plan) == [(str(bad["client_id"]), reason)]
    assert clients_of(plan) == ["a", "c"]
    assert plan.stop is None


def test_a_sealed_round_or_a_finished_task_rejects_every_update() -> None:
    # GIVEN the round's close has begun, or the task finished
    # THEN every update of a run is rejected with the reason, and none goes on
    sealed = plan_run(facts(sealed=True), [item("a"), item("b")])
    assert rejections(sealed) == [("a", "closed_round"), ("b", "closed_round")]
    finished = plan_run(facts(finished="rounds"), [item("a")])
    assert rejections(finished) == [("a", "task_finished")]
    assert sealed.candidates == finished.candidates == ()


def test_a_rejection_records_its_reason_and_what_it_was_decided_on() -> None:
    # GIVEN client b's update for a round that has not opened, rejected at t = 100
    plan = plan_run(facts(), [item("b", round_id=2, base_version=2)])
    step = plan.steps[0]
    assert step.error is not None
    verdict = rejection("t", step, step.error, 100.0)
    # THEN the verdict is a rejection with its reason, at t, not the client's own word
    assert (verdict["verdict"], verdict["reason"], verdict["decided_at"]) == (
        "rejected", "future_round", 100.0
    )  # fmt: skip
    assert verdict["attributed"] is False
    assert "round 2, which has not opened" in verdict["detail"]
    assert verdict["submitted"]["client_id"] == "b"
    assert len(verdict["item_digest"]) == 64


def test_an_acceptance_applies_to_the_next_version_and_records_what_it_validated() -> None:
    # GIVEN client a's update in round 1, validated
    plan = plan_run(facts(), [item("a")])
    step = plan.candidates[0]
    record, read = step.record, step.item
    assert record is not None
    # WHEN its acceptance is made at t = 100
    verdict = acceptance(1, record, read, 100.0)
    # THEN it is for version 2, with the record's own fields and the item's digest
    assert (verdict["verdict"], verdict["applied_version"], verdict["decided_at"]) == (
        "accepted",
        2,
        100.0,
    )
    assert verdict["submitted"]["sha256"] == SHA
    assert verdict["submitted"]["client_id"] == "a"
    assert len(verdict["item_digest"]) == 64


def test_the_tally_counts_only_a_rostered_clients_own_word() -> None:
    # GIVEN decided items: a accepted, b rejected for its own bytes, c's key squatted by
    # junk (rejected, not attributed), a stranger accepted (never, but counted nowhere)
    decided = [
        {"client_id": "a", "verdict": "accepted"},
        {"client_id": "b", "verdict": "rejected", "attributed": True},
        {"client_id": "c", "verdict": "rejected", "attributed": False},
        {"client_id": "x", "verdict": "accepted"},
        {"client_id": "c"},  # undecided
    ]
    # WHEN they are tallied
    got = tally_of(cfg(), decided)
    # THEN a and b settled, only a accepted; c's slot waits for c (B4)
    assert got == Tally(frozenset({"a", "b"}), frozenset({"a"}))
    # AND the tally on a round item adds up as sets: a repeated record counts once
    again = Tally.of({"settled": {"a"}, "accepted_clients": {"a"}}).plus(got)
    assert again == got
    assert Tally.of(None) == Tally()
