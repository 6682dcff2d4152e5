"""The IAM actions an ASL definition's service integrations call (`infra.asl_check`
re-exports these; the embedded stack's state machine principal is granted them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

INTEGRATION_PREFIX = "arn:aws:states:::"
# Optimised integrations whose IAM action is not just the API name capitalised.
SPECIAL_ACTIONS = {"lambda:invoke": "lambda:InvokeFunction"}


def sub_machines(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, branch in enumerate(state.get("Branches") or []):
        yield f"Branches[{i}]", branch
    for key in ("ItemProcessor", "Iterator"):
        if isinstance(state.get(key), dict):
            yield key, state[key]


def iter_states(machine: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for state in (machine.get("States") or {}).values():
        if isinstance(state, dict):
            yield state
            for _, sub in sub_machines(state):
                yield from iter_states(sub)


def required_actions(definition: dict[str, Any]) -> set[str]:
    """IAM actions behind the definition's `arn:aws:states:::service:api[.pattern]` tasks."""
    actions = set()
    for state in iter_states(definition):
        resource = state.get("Resource")
        if state.get("Type") != "Task" or not isinstance(resource, str):
            continue
        if not resource.startswith(INTEGRATION_PREFIX):
            continue
        integration = resource.removeprefix(INTEGRATION_PREFIX).removeprefix("aws-sdk:")
        service, _, api = integration.partition(":")
        api = api.split(".")[0]
        key = f"{service}:{api}"
        actions.add(SPECIAL_ACTIONS.get(key, f"{service}:{api[:1].upper()}{api[1:]}"))
    return actions
