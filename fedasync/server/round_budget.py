"""Central DP's budget in sync rounds: the release that spends it finishes the task, and
no release is made past it (the count was fixed at `task start`, `dp_release_limit`)."""

from __future__ import annotations

from typing import Any

import structlog

from fedasync.core.items import round as r
from fedasync.core.items.round import RoundResult
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


def spent_budget(view: TaskView) -> dict[str, Any]:
    """What a round's result adds when its release is the last the DP budget allows."""
    releases = view.dp_releases + 1
    if view.dp_release_limit is None or releases < view.dp_release_limit:
        return {}
    return r.budget_finish()


async def budget_spent(store: ServerStore, view: TaskView, round_id: int) -> dict[str, Any]:
    """No release past the budget (a task resumed after its last allowed release)."""
    log.warning("round.privacy_budget_spent", round_id=round_id, releases=view.dp_releases)
    await finish_task(store, view.task_name, "privacy_budget", token=None)
    return r.budget_refused(round_id)


def round_callback(result: dict[str, Any]) -> dict[str, Any]:
    """What the round's wait is answered with: its result, or, when the round's release
    spent the DP budget and finished the task, the finish (as `task stop` answers it)."""
    outcome = RoundResult.from_item(result)
    if not (outcome.closed and outcome.finished):
        return result
    return r.finish_answer(outcome.finish_reason, outcome.version, outcome.sha256)
