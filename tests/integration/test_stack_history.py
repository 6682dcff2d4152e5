"""The history a sync task's execution writes, counted by moto's Step Functions engine:
an independent check of the per-state counts behind `max_sync_rounds`."""

from __future__ import annotations

import asyncio

from fedasync.core.config import TaskConfig
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import (
    CLIENTS,
    clients_for,
    initial_model,
    run_client,
    stack,  # noqa: F401 - the fixture
    store_for,
    wait_execution,
)
from tests.unit.test_config_limits import (
    AFTER_ROUNDS_OK,
    BEFORE_ROUNDS,
    EVENTS_BY_KIND,
    ROUND_ON_TIME,
    path_events,
)


async def history_length(stack, arn: str) -> int:
    sfn = await stack.aws.sfn()
    count, kwargs = 0, {"executionArn": arn, "maxResults": 1000}
    while True:
        page = await sfn.get_execution_history(**kwargs)
        count += len(page["events"])
        if not page.get("nextToken"):
            return count
        kwargs["nextToken"] = page["nextToken"]


async def test_each_round_on_time_adds_the_events_the_asl_walk_counts(stack) -> None:
    # GIVEN the counts from walking the ASL: around the rounds, and per round on time
    around = 1 + path_events(BEFORE_ROUNDS) + path_events(AFTER_ROUNDS_OK) + 1
    per_round = path_events(ROUND_ON_TIME)
    assert (around, per_round) == (20, 14)
    assert EVENTS_BY_KIND["callback"] == 6
    lengths = {}
    for rounds in (1, 3):
        # WHEN a sync task of 1, then 3 rounds runs with every silo answering
        cfg = TaskConfig.parse(
            {"task_name": f"h{rounds}", "clients": list(CLIENTS), "rounds": rounds}
        )
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 60)
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        lengths[rounds] = await history_length(stack, arn)
    # THEN the histories are 20 + 14 x rounds events long: 34 and 62
    assert lengths == {1: around + per_round, 3: around + 3 * per_round} == {1: 34, 3: 62}
