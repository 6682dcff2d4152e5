"""A sync stream run's plan, pure (`fedasync.server.sync_plan`), and the round item's
tally of its clients' word (`fedasync.server.members`): values in, values out."""

from __future__ import annotations

from typing import Any

import pytest

from fedasync.core.config import TaskConfig
from fedasync.server.members import Tally, tally_of
from fedasync.server.sync_plan import RunFacts, RunPlan, acceptance, plan_run

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
    return [record.client_id for record, _ in plan.candidates]


def test_a_run_of_valid_updates_goes_on_whole_to_its_objects() -> None:
    # GIVEN the open round 1 and every client's update WHEN the run is planned
    plan = plan_run(facts(), [item("a"), item("b"), item("c")])
    # THEN every update is a candidate, in order, and the run does not stop
    assert clients_of(plan) == ["a", "b", "c"]
    assert plan.stop is None


@pytest.mark.parametrize(
    ("bad", "stop"),
    [
        (None, "absent"),
        (item("b", verdict="accepted"), "decided"),
        (item("x", s3_key="t/local/x/1/u.safetensors"), "unknown_client"),
        (item("b", s3_key="t/local/a/1/u-b.safetensors"), "spoofed_key"),
        (item("b", round_id=0, base_version=0), "closed_round"),
        (item("b", round_id=2, base_version=2), "future_round"),
    ],
    ids=["vanished", "decided", "stranger", "spoofed", "late", "early"],
)
def test_a_run_stops_before_its_first_update_the_one_by_one_path_must_judge(
    bad: dict[str, Any] | None, stop: str
) -> None:
    # GIVEN a run whose second update is absent, decided or invalid
    # WHEN it is planned
    plan = plan_run(facts(), [item("a"), bad, item("c")])
    # THEN only the first goes on, and the stop names why (the later valid one waits)
    assert clients_of(plan) == ["a"]
    assert plan.stop == stop


def test_a_sealed_round_or_a_finished_task_takes_no_update() -> None:
    # GIVEN the round's close has begun, or the task finished
    # THEN a run's first update stops it
    assert plan_run(facts(sealed=True), [item("a")]) == RunPlan((), "closed_round")
    assert plan_run(facts(finished="rounds"), [item("a")]) == RunPlan((), "task_finished")


def test_an_acceptance_applies_to_the_next_version_and_records_what_it_validated() -> None:
    # GIVEN client a's update in round 1, validated
    plan = plan_run(facts(), [item("a")])
    record, read = plan.candidates[0]
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
