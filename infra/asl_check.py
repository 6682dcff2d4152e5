"""A structural check of an ASL definition, for when `asl-validator` (npm) is not there.

    python infra/asl_check.py [stepfunctions/fl_task.asl.json]

`check_asl` returns the problems it finds, as sentences naming the state:
- `StartAt`, every `Next`, `Default`, `Choices[].Next` and `Catch[].Next` names a state
  of the same scope (top level, a Parallel branch, a Map's processor);
- every state is reachable from `StartAt`;
- a state that is not terminal has `Next` or `End: true`;
- every `.waitForTaskToken` Task has `TimeoutSeconds`/`TimeoutSecondsPath` (a lost token
  must not park the execution for a year) and a `Catch` (its timeout must lead
  somewhere that records why the task ended).

`required_actions` lists the IAM actions the definition's service integrations call,
so a test can hold the state machine's role to exactly those.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedasync.policy.asl import iter_states, required_actions
from fedasync.policy.asl import sub_machines as _sub_machines

WAIT_FOR_TOKEN = ".waitForTaskToken"  # noqa: S105 - an ASL resource suffix, not a secret
_TERMINAL_TYPES = frozenset({"Succeed", "Fail", "Choice"})

__all__ = ["check_asl", "iter_states", "required_actions"]


def _targets(state: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, target) for every transition a state declares."""
    if "Next" in state:
        yield "Next", state["Next"]
    if "Default" in state:
        yield "Default", state["Default"]
    for i, choice in enumerate(state.get("Choices") or []):
        if isinstance(choice, dict):
            yield f"Choices[{i}].Next", choice.get("Next")
    for i, catch in enumerate(state.get("Catch") or []):
        if isinstance(catch, dict):
            yield f"Catch[{i}].Next", catch.get("Next")


def _check_task(where: str, state: dict[str, Any]) -> list[str]:
    resource = state.get("Resource")
    if not (isinstance(resource, str) and resource.endswith(WAIT_FOR_TOKEN)):
        return []
    problems = []
    if "TimeoutSeconds" not in state and "TimeoutSecondsPath" not in state:
        problems.append(f"{where}: waits for a task token without TimeoutSeconds")
    if not state.get("Catch"):
        problems.append(f"{where}: waits for a task token without a Catch")
    return problems


def _reachable(start: str, states: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or not isinstance(states.get(name), dict):
            continue
        seen.add(name)
        todo.extend(t for _, t in _targets(states[name]) if isinstance(t, str))
    return seen


def _check_machine(machine: Any, scope: str) -> list[str]:
    if not isinstance(machine, dict) or not isinstance(machine.get("States"), dict):
        return [f"{scope}: no 'States' object"]
    states: dict[str, Any] = machine["States"]
    start = machine.get("StartAt")
    problems = [] if start in states else [f"{scope}: StartAt {start!r} is not a state"]
    for name, state in states.items():
        where = f"{scope}{name}"
        if not isinstance(state, dict):
            problems.append(f"{where}: not an object")
            continue
        for field, target in _targets(state):
            if target not in states:
                problems.append(f"{where}: {field} {target!r} is not a state in this scope")
        kind = state.get("Type")
        if kind not in _TERMINAL_TYPES and "Next" not in state and state.get("End") is not True:
            problems.append(f"{where}: a {kind} state needs Next or End: true")
        if kind == "Task":
            problems.extend(_check_task(where, state))
        for label, sub in _sub_machines(state):
            problems.extend(_check_machine(sub, f"{where}.{label}/"))
    if start in states:
        problems.extend(
            f"{scope}{name}: unreachable from StartAt {start!r}"
            for name in states
            if name not in _reachable(start, states)
        )
    return problems


def check_asl(definition: dict[str, Any]) -> list[str]:
    """Every structural problem of an ASL definition (empty when it is sound)."""
    return _check_machine(definition, "")


def main(argv: list[str]) -> int:
    from fedasync.resources import ASL_PATH

    path = Path(argv[0]) if argv else ASL_PATH
    problems = check_asl(json.loads(path.read_text(encoding="utf-8")))
    for problem in problems:
        sys.stderr.write(f"{path}: {problem}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main(sys.argv[1:]))
