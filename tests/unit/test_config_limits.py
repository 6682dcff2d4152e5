"""TaskConfig limits that come from AWS quotas, and fields a mode does not read."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from fedasync.core.config import (
    EVENTS_AROUND_ROUNDS,
    EVENTS_PER_SYNC_ROUND,
    MAX_SYNC_ROUNDS,
    TaskConfig,
)
from fedasync.core.errors import ConfigError
from fedasync.resources import ASL_PATH

# History events per state, by kind (the Step Functions history event types, by hand)
EVENTS_BY_KIND = {
    "callback": 6,  # TaskStateEntered, Scheduled, Started, Submitted, Succeeded|TimedOut, Exited
    "task": 5,  # TaskStateEntered, Scheduled, Started, Succeeded, Exited
    "Pass": 2,  # Entered, Exited
    "Choice": 2,
    "Succeed": 2,
    "Fail": 2,  # at most
}
EXECUTION_START, EXECUTION_END = 1, 1


def _kind(state: dict[str, Any]) -> str:
    if state["Type"] != "Task":
        return str(state["Type"])
    return "callback" if state["Resource"].endswith(".waitForTaskToken") else "task"


def _targets(state: dict[str, Any]) -> set[str]:
    out = {state.get("Next"), state.get("Default")}
    out |= {c["Next"] for c in state.get("Choices", []) + state.get("Catch", [])}
    return {t for t in out if t}


def path_events(path: list[str]) -> int:
    """History events of the states along `path`, checking each step is an ASL transition."""
    states = json.loads(ASL_PATH.read_text())["States"]
    for here, there in itertools.pairwise(path):
        assert there in _targets(states[here]), f"{here} cannot go to {there}"
    return sum(EVENTS_BY_KIND[_kind(states[name])] for name in path)


# A round that runs to its deadline: OpenRound times out (its Catch), CloseRound answers
ROUND_AT_DEADLINE = ["OpenRound", "CloseRound", "IsRoundClosed", "NextRound", "MoreRounds"]
ROUND_ON_TIME = ["OpenRound", "IsRoundClosed", "NextRound", "MoreRounds"]
BEFORE_ROUNDS = ["StartTask", "ChooseMode", "FirstRound"]
AFTER_ROUNDS_OK = ["RecordSucceeded", "TaskSucceeded"]
AFTER_ROUNDS_FAILED = ["QuorumMissed", "RecordFailed", "TaskFailed"]


def test_a_round_takes_at_most_18_history_events_and_the_task_20_more() -> None:
    # GIVEN the ASL's sync loop WHEN its events are counted state by state
    assert path_events([*ROUND_AT_DEADLINE, "OpenRound"]) - path_events(["OpenRound"]) == 18
    assert path_events(ROUND_ON_TIME) == 12
    path_events([*BEFORE_ROUNDS, "OpenRound"])  # checks they lead to the first round
    before = EXECUTION_START + path_events(BEFORE_ROUNDS)
    after = max(path_events(AFTER_ROUNDS_OK), path_events(AFTER_ROUNDS_FAILED)) + EXECUTION_END
    # THEN the config's constants are those counts
    assert (EVENTS_PER_SYNC_ROUND, before + after) == (18, 20)
    assert before + after == EVENTS_AROUND_ROUNDS
    # AND the largest task fits the 25,000-event history: 20 + 18 x 1387 = 24,986
    assert MAX_SYNC_ROUNDS == 1387
    assert EVENTS_AROUND_ROUNDS + EVENTS_PER_SYNC_ROUND * MAX_SYNC_ROUNDS <= 25_000
    assert EVENTS_AROUND_ROUNDS + EVENTS_PER_SYNC_ROUND * (MAX_SYNC_ROUNDS + 1) > 25_000


def base(**over: Any) -> dict[str, Any]:
    return {"task_name": "digits", "clients": ["a", "b"], **over}


def test_rounds_are_bounded_by_the_execution_history() -> None:
    assert TaskConfig.parse(base(rounds=1387)).rounds == 1387
    with pytest.raises(ConfigError) as info:
        TaskConfig.parse(base(rounds=1388))
    assert "rounds 1388 exceeds 1387" in info.value.message
    assert "history holds 25000 events" in info.value.message


def test_an_async_idle_limit_must_come_before_the_deadline() -> None:
    ok = TaskConfig.parse(base(mode="async", heartbeat_s=59, deadline_s=60))
    assert (ok.heartbeat_s, ok.deadline_s) == (59, 60)
    for heartbeat_s in (60, 61):
        with pytest.raises(ConfigError) as info:
            TaskConfig.parse(base(mode="async", heartbeat_s=heartbeat_s, deadline_s=60))
        assert f"heartbeat_s ({heartbeat_s}) must be less than deadline_s (60)" in (
            info.value.message
        )
    # the default idle limit (600 s) is refused with a short deadline: it says so
    with pytest.raises(ConfigError, match=r"heartbeat_s \(600\) must be less than deadline_s"):
        TaskConfig.parse(base(mode="async", deadline_s=300))


@pytest.mark.parametrize(
    ("mode", "field", "value"),
    [
        ("sync", "max_versions", 10),
        ("sync", "alpha", 0.5),
        ("sync", "deadline_s", 600),
        ("sync", "heartbeat_s", 60),
        ("sync", "buffer_size", 3),
        ("async", "rounds", 3),
        ("async", "round_timeout_s", 60),
        ("async", "min_clients", 1),
    ],
)
def test_a_field_of_the_other_mode_is_refused_by_name(mode: str, field: str, value: Any) -> None:
    # GIVEN a task that sets a field its mode never reads
    other = "async" if mode == "sync" else "sync"
    # WHEN it is parsed THEN the error names the field and the mode it belongs to
    with pytest.raises(ConfigError) as info:
        TaskConfig.parse(base(mode=mode, **{field: value}))
    assert info.value.message == (
        f"invalid config for task 'digits':\n  {field}: applies to {other} tasks only; "
        f"this task is {mode} (remove it, or set mode)"
    )


def test_defaults_of_the_other_mode_are_not_refused_and_stored_configs_read_back() -> None:
    # GIVEN a sync task that sets only its own fields
    cfg = TaskConfig.parse(base(rounds=3))
    assert cfg.fields_of_the_other_mode() == []
    # WHEN it is stored as the TASK item stores it (every field) and read back
    again = TaskConfig.model_validate_json(cfg.model_dump_json())
    # THEN it reads back the same (the refusal applies to what an operator wrote)
    assert again == cfg
