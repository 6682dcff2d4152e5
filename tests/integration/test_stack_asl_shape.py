"""The ASL read as data: every path ends, every wait has a timeout and a way out."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from fedasync.resources import ASL_PATH, ASL_PLACEHOLDERS, substitute_asl

WAIT_FOR_TOKEN = ".waitForTaskToken"


@pytest.fixture(scope="module")
def asl() -> dict[str, Any]:
    return json.loads(ASL_PATH.read_text())


def targets(state: dict[str, Any]) -> list[str]:
    found = [state["Next"]] if "Next" in state else []
    found += [c["Next"] for c in state.get("Catch", [])]
    found += [c["Next"] for c in state.get("Choices", [])]
    found += [state["Default"]] if "Default" in state else []
    return found


def test_placeholders_are_exactly_the_shared_ones() -> None:
    # GIVEN the ASL text WHEN its ${...} placeholders are listed
    found = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL_PATH.read_text()))
    # THEN they are those CDK and the embedded stack fill, and filling them leaves none
    assert found == set(ASL_PLACEHOLDERS)
    filled = substitute_asl(ASL_PATH.read_text(), {n: "x" for n in ASL_PLACEHOLDERS})
    assert "${" not in filled


def test_every_transition_names_an_existing_state(asl: dict[str, Any]) -> None:
    states = asl["States"]
    assert asl["StartAt"] in states
    for name, state in states.items():
        for target in targets(state):
            assert target in states, f"{name} -> {target} does not exist"


def test_every_state_is_reachable_and_every_path_can_end(asl: dict[str, Any]) -> None:
    states = asl["States"]
    seen, todo = set(), [asl["StartAt"]]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += targets(states[name])
    assert seen == set(states)
    for name, state in states.items():
        ends = state["Type"] in {"Succeed", "Fail"} or state.get("End") is True
        assert ends or targets(state), f"{name} neither ends nor moves on"


def test_every_wait_for_token_state_has_a_timeout_and_catches_everything(
    asl: dict[str, Any],
) -> None:
    waits = {
        n: s for n, s in asl["States"].items() if s.get("Resource", "").endswith(WAIT_FOR_TOKEN)
    }
    assert set(waits) == {"OpenRound", "CheckRound", "CloseRound", "OpenTask", "Finalize"} | {
        "SecAggPhase",  # secure aggregation's phase waits (tests/integration/test_secagg_asl.py)
        "SecAggClosePhase",
    }
    for name, state in waits.items():
        assert "TimeoutSeconds" in state or "TimeoutSecondsPath" in state, name
        caught = {e for c in state["Catch"] for e in c["ErrorEquals"]}
        assert "States.ALL" in caught, name
        assert state["Parameters"]["MessageBody"]["task_token.$"] == "$$.Task.Token", name
        assert state["Parameters"]["MessageBody"]["schema_version"] == 1, name


def test_timeouts_of_the_open_states_lead_to_their_closing_state(asl: dict[str, Any]) -> None:
    states = asl["States"]

    def on_timeout(name: str) -> set[str]:
        return {
            c["Next"]
            for c in states[name]["Catch"]
            if {"States.Timeout", "States.HeartbeatTimeout"} & set(c["ErrorEquals"])
        }

    # a round's wait is cut into checks: each timeout counts one, the last leads to CloseRound
    assert on_timeout("OpenRound") == on_timeout("CheckRound") == {"CountTick"}
    assert states["CountTick"]["Next"] == "IsRoundDue"
    due = states["IsRoundDue"]
    assert [c["Next"] for c in due["Choices"]] == ["CheckRound"]
    assert due["Choices"][0]["NumericLessThanEqualsPath"] == "$.round_ticks"
    assert due["Default"] == "CloseRound"
    assert states["OpenRound"]["TimeoutSecondsPath"] == "$.round_check_s"
    assert states["CheckRound"]["TimeoutSecondsPath"] == "$.round_check_s"
    assert states["CheckRound"]["Parameters"]["MessageBody"]["kind"] == "check_round"
    assert {states[s]["Next"] for s in on_timeout("OpenTask")} == {"Finalize"}
    assert states["OpenTask"]["TimeoutSecondsPath"] == "$.deadline_s"
    assert states["OpenTask"]["HeartbeatSecondsPath"] == "$.heartbeat_s"


def test_every_failure_is_recorded_before_the_fail_state(asl: dict[str, Any]) -> None:
    states = asl["States"]
    fails = [n for n, s in states.items() if s["Type"] == "Fail"]
    assert fails == ["TaskFailed"]
    into_fail = {n for n, s in states.items() if "TaskFailed" in targets(s)}
    # StartFailed cannot record: the TASK item it would write to is missing
    assert into_fail == {"RecordFailed", "StartFailed"}
    assert states["RecordFailed"]["Parameters"]["ExpressionAttributeValues"][":status"] == {
        "S": "FAILED"
    }
