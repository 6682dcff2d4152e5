"""TaskConfig limits that come from AWS quotas, and fields a mode does not read."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from fedasync.core.config import TaskConfig
from fedasync.core.config_limits import (
    EVENTS_AROUND_ROUNDS,
    EVENTS_PER_ROUND_CHECK,
    EVENTS_PER_SYNC_ROUND,
    max_sync_rounds,
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


def round_at_deadline(ticks: int) -> list[str]:
    """A round that runs to its deadline: OpenRound's slice and every check time out,
    then CloseRound answers."""
    checks = ["CountTick", "IsRoundDue"] + ["CheckRound", "CountTick", "IsRoundDue"] * (ticks - 1)
    return [
        "MoreRounds", "ResetRoundClock", "OpenRound", *checks,
        "CloseRound", "IsRoundClosed", "NextRound",
    ]  # fmt: skip


ROUND_ON_TIME = ["MoreRounds", "ResetRoundClock", "OpenRound", "IsRoundClosed", "NextRound"]
BEFORE_ROUNDS = ["StartTask", "ChooseMode", "FirstRound"]
AFTER_ROUNDS_OK = ["MoreRounds", "RecordSucceeded", "TaskSucceeded"]
AFTER_ROUNDS_FAILED = ["QuorumMissed", "RecordFailed", "TaskFailed"]


def test_a_round_takes_14_plus_10_per_check_history_events_and_the_task_20_more() -> None:
    # GIVEN the ASL's sync loop WHEN its events are counted state by state
    for ticks in (1, 2, 20):
        walk = [*round_at_deadline(ticks), "MoreRounds"]
        assert path_events(walk) - path_events(["MoreRounds"]) == 14 + 10 * ticks
    assert path_events(ROUND_ON_TIME) == 14
    path_events([*BEFORE_ROUNDS, "MoreRounds"])  # checks they lead to the first round
    before = EXECUTION_START + path_events(BEFORE_ROUNDS)
    after = max(path_events(AFTER_ROUNDS_OK), path_events(AFTER_ROUNDS_FAILED)) + EXECUTION_END
    # THEN the config's constants are those counts
    assert (EVENTS_PER_SYNC_ROUND, EVENTS_PER_ROUND_CHECK, before + after) == (14, 10, 20)
    assert before + after == EVENTS_AROUND_ROUNDS
    # AND the largest task fits the 25,000-event history: with one check per round,
    # 20 + 24 x 1040 = 24,980; with the default 20 checks, 20 + 214 x 116 = 24,844
    assert (max_sync_rounds(1), max_sync_rounds(20)) == (1040, 116)
    for ticks in (1, 20):
        worst = 14 + 10 * ticks
        assert (
            20 + worst * max_sync_rounds(ticks)
            <= 25_000
            < 20 + worst * (max_sync_rounds(ticks) + 1)
        )


def base(**over: Any) -> dict[str, Any]:
    return {"task_name": "digits", "clients": ["a", "b"], **over}


def test_rounds_are_bounded_by_the_execution_history() -> None:
    one_check = {"round_timeout_s": 60, "round_check_s": 60}
    assert TaskConfig.parse(base(rounds=1040, **one_check)).rounds == 1040
    with pytest.raises(ConfigError) as info:
        TaskConfig.parse(base(rounds=1041, **one_check))
    assert "rounds 1041 exceeds 1040" in info.value.message
    assert "history holds 25000 events" in info.value.message
    # the default round (300 s, checked every 15 s: 20 checks) allows 116
    assert TaskConfig.parse(base(rounds=116)).rounds == 116
    with pytest.raises(ConfigError, match="rounds 117 exceeds 116"):
        TaskConfig.parse(base(rounds=117))


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
