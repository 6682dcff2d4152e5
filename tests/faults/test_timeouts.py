"""A round's wait state times out: with a quorum it closes with the arrivals; without,
the execution fails with a cause a person can read, and `fedasync task status` shows it."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from fedasync.cli import app
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.server.tasks import start_task
from tests.faults.harness import CLIENTS, EXAMPLES, next_notice, stack_for
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)


async def status(stack, name: str) -> dict:
    where = ["--endpoint", stack.endpoints.endpoint_url, "--prefix", stack.spec.prefix]
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["task", "status", name, "--json", *where]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("answering", [1, 2], ids=["quorum-missed", "quorum-met"])
async def test_a_round_that_times_out_closes_by_quorum_or_fails_readably(
    moto_server, prefix, answering
):
    # GIVEN a 1-round sync task needing 2 of 3 clients within 3 s
    cfg = TaskConfig.parse(
        {
            "task_name": "late",
            "clients": list(CLIENTS),
            "rounds": 1,
            "min_clients": 2,
            "round_timeout_s": 3,
        }
    )
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = clients_for(stack, CLIENTS, EXAMPLES)
        # WHEN only `answering` clients answer before the wait times out
        for client in clients[:answering]:
            await client.submit(await next_notice(client, "late"))
        desc = await wait_execution(stack, arn, timeout_s=30)
        shown = await status(stack, "late")
    if answering >= cfg.min_clients:
        # THEN the round closed with the arrivals and the task succeeded
        assert desc["status"] == "SUCCEEDED"
        x0 = initial_model()
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(2)], EXAMPLES[:2])
        assert shown["version"] == 1
        assert shown["final_sha256"] == codec.sha256_bytes(codec.encode(expected))
    else:
        # THEN the execution failed with a readable cause, and status shows it
        cause = (
            "round 0 of task 'late' closed at its deadline with 1 accepted update(s); "
            "2 needed (min_clients)"
        )
        assert desc["status"] == "FAILED"
        assert desc["cause"] == cause
        assert shown["status"] == "FAILED"
        assert shown["execution"]["status"] == "FAILED"
        assert cause in json.dumps(shown)
        assert shown["version"] == 0
        assert keys.global_key("late", 1) not in json.dumps(shown)
