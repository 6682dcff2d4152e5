"""The ASL as data: every transition lands on a state, every token wait can end."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedasync.resources import ASL_PATH, ASL_PLACEHOLDERS
from infra.asl_check import check_asl, required_actions

pytestmark = pytest.mark.cdk

WAIT = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
SOUND: dict[str, Any] = {
    "StartAt": "Open",
    "States": {
        "Open": {
            "Type": "Task",
            "Resource": WAIT,
            "TimeoutSeconds": 60,
            "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "Closed"}],
            "Next": "More?",
        },
        "More?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.more", "BooleanEquals": True, "Next": "Open"}],
            "Default": "Closed",
        },
        "Closed": {
            "Type": "Task",
            "Resource": "arn:aws:states:::dynamodb:updateItem",
            "Next": "Done",
        },
        "Done": {"Type": "Succeed"},
    },
}


def broken(**changes: Any) -> dict[str, Any]:
    """SOUND with `state={field: value or None to delete}` changes applied."""
    definition = copy.deepcopy(SOUND)
    for state, fields in changes.items():
        for field, value in fields.items():
            if value is None:
                definition["States"][state].pop(field)
            else:
                definition["States"][state][field] = value
    return definition


@pytest.fixture(scope="module")
def real_asl() -> dict[str, Any]:
    if not ASL_PATH.is_file():
        pytest.skip("stepfunctions/fl_task.asl.json is not written yet")
    return json.loads(ASL_PATH.read_text(encoding="utf-8"))


def test_the_real_asl_is_sound(real_asl: dict[str, Any]) -> None:
    assert check_asl(real_asl) == []


def test_the_real_asl_uses_exactly_the_declared_placeholders(real_asl: dict[str, Any]) -> None:
    found = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL_PATH.read_text(encoding="utf-8")))
    assert found == set(ASL_PLACEHOLDERS)


def test_the_real_asl_integrates_only_with_the_queue_and_the_table(
    real_asl: dict[str, Any],
) -> None:
    assert {a.split(":")[0] for a in required_actions(real_asl)} <= {"sqs", "dynamodb"}


def test_a_sound_definition_has_no_problems() -> None:
    assert check_asl(SOUND) == []


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        (broken(Open={"Next": "Nowhere"}), "Open: Next 'Nowhere' is not a state"),
        (broken(Closed={"Next": None}), "Closed: a Task state needs Next or End"),
        (broken(**{"More?": {"Default": "Gone"}}), "More?: Default 'Gone' is not a state"),
        (
            broken(Open={"TimeoutSeconds": None}),
            "Open: waits for a task token without TimeoutSeconds",
        ),
        (broken(Open={"Catch": None}), "Open: waits for a task token without a Catch"),
        (
            broken(Open={"Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Lost"}]}),
            "Open: Catch[0].Next 'Lost' is not a state",
        ),
        ({**SOUND, "StartAt": "Begin"}, "StartAt 'Begin' is not a state"),
        (broken(Closed={"Next": None, "End": True}), "Done: unreachable from StartAt"),
    ],
)
def test_a_broken_definition_is_caught(definition: dict[str, Any], problem: str) -> None:
    problems = check_asl(definition)
    assert any(problem in p for p in problems), problems


def test_a_timeout_path_counts_as_a_timeout() -> None:
    definition = broken(Open={"TimeoutSeconds": None, "TimeoutSecondsPath": "$.deadline_s"})
    assert check_asl(definition) == []


def test_nested_branches_are_checked_in_their_own_scope() -> None:
    branch = {"StartAt": "Inner", "States": {"Inner": {"Type": "Pass", "Next": "Open"}}}
    definition = broken(Closed={"Type": "Parallel", "Branches": [branch]})
    assert any("Closed.Branches[0]/Inner: Next 'Open'" in p for p in check_asl(definition))


def test_required_actions_name_the_iam_actions_of_integrations() -> None:
    assert required_actions(SOUND) == {"sqs:SendMessage", "dynamodb:UpdateItem"}


def _asl_validator() -> list[str] | None:
    """The npm asl-validator if it is installed locally; never downloaded by a test."""
    if shutil.which("asl-validator"):
        return ["asl-validator"]
    npx = shutil.which("npx")
    if npx is None:
        return None
    probe = subprocess.run(
        [npx, "--no-install", "asl-validator", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [npx, "--no-install", "asl-validator"] if probe.returncode == 0 else None


def test_asl_validator_accepts_the_real_asl(real_asl: dict[str, Any], tmp_path: Path) -> None:
    command = _asl_validator()
    if command is None:
        pytest.skip("asl-validator (npm) is not installed; check_asl covers the structure")
    # the validator reads the definition as deployed: placeholders filled with sample values
    filled = re.sub(r"\$\{[A-Za-z0-9_]+\}", "placeholder", ASL_PATH.read_text(encoding="utf-8"))
    path = tmp_path / "fl_task.asl.json"
    path.write_text(filled, encoding="utf-8")
    done = subprocess.run(
        [*command, "--json-path", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
