"""The ASL's SecAgg states read as data: taken only for a sync task whose input has
`secure_aggregation`, each phase a wait cut into slices, its deadline a close."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedasync.resources import ASL_PATH


@pytest.fixture(scope="module")
def states() -> dict[str, Any]:
    return json.loads(ASL_PATH.read_text())["States"]


def test_only_a_sync_task_with_secure_aggregation_enters_the_secagg_rounds(states):
    choices = states["ChooseMode"]["Choices"]
    # GIVEN ChooseMode THEN its first choice needs both, and the plain choices follow as before
    assert choices[0] == {
        "And": [
            {"Variable": "$.mode", "StringEquals": "sync"},
            {"Variable": "$.secure_aggregation", "IsPresent": True},
        ],
        "Next": "SecAggFirstRound",
    }
    assert [c["Next"] for c in choices[1:]] == ["FirstRound", "OpenTask"]
    # AND the SecAgg path carries the option from round to round
    for name in ("SecAggFirstRound", "SecAggNextRound"):
        assert states[name]["Parameters"]["secure_aggregation.$"] == "$.secure_aggregation"


def test_a_phase_waits_in_slices_and_closes_at_its_deadline(states):
    phase, close = states["SecAggPhase"], states["SecAggClosePhase"]
    assert phase["TimeoutSecondsPath"] == "$.secure_aggregation.phase_check_s"
    assert phase["Parameters"]["MessageBody"]["kind"] == "secagg_phase"
    assert close["Parameters"]["MessageBody"]["kind"] == "secagg_close"
    for state in (phase, close):
        assert state["Parameters"]["MessageBody"]["phase.$"] == "$.phase.name"
    timeout = [c for c in phase["Catch"] if "States.Timeout" in c["ErrorEquals"]]
    assert [c["Next"] for c in timeout] == ["SecAggCountTick"]
    due = states["SecAggIsPhaseDue"]
    assert due["Choices"][0]["NumericLessThanEqualsPath"] == "$.secure_aggregation.phase_ticks"
    assert due["Choices"][0]["Next"] == "SecAggPhase"
    assert due["Default"] == "SecAggClosePhase"


def test_a_phase_result_opens_the_next_phase_ends_the_round_or_fails_the_task(states):
    routes = [c["Next"] for c in states["SecAggIsPhaseClosed"]["Choices"]]
    assert routes == ["SecAggNextPhase", "SecAggNextRound", "RecordSucceeded", "QuorumMissed"]
    assert states["SecAggNextPhase"]["Parameters"] == {
        "name.$": "$.round_result.next_phase",
        "n": 1,
    }
    assert states["SecAggOpenRound"]["Result"] == {"name": "advertise_keys", "n": 1}
