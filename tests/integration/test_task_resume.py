"""`fedasync task resume`: an execution stopped mid-task is followed by a new attempt that
continues from what the server committed, and the ledger across both attempts replays to
the final model byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedasync import logs
from fedasync.cli import app
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.events import export_ledger, export_objects, folder_loader
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.faults.harness import next_notice
from tests.integration.test_server_sync import (
    clients_for,
    initial_model,
    store_for,
    wait_execution,
)

CLIENTS = ("a", "b", "c")


@pytest.fixture
async def stack(moto_server, prefix):
    # the test's own stderr, bound now: the pumps' lines stay out of the CLI's
    # (CliRunner's) stderr, which these tests read
    logs.configure(level="WARNING", stream=sys.stderr)
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


def cli(stack: EmbeddedStack, *args: str):
    # as an operator runs it: with the stack config `local up` writes (the operator's key)
    config = stack.endpoints
    path = Path(tempfile.mkdtemp()) / "stack.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    where = ["--endpoint", str(stack.endpoints.endpoint_url), "--stack-config", str(path)]
    return asyncio.to_thread(CliRunner().invoke, app, [*args, *where])


async def _abort(stack: EmbeddedStack, arn: str, task_name: str, token_sk: str) -> None:
    """StopExecution, as an operator would in the console, once the execution waits on a
    token the server holds. moto parks a stopped execution in its wait until the wait
    returns (AWS ends it at once): the token wakes it, and it ends ABORTED, as on AWS,
    without having taken the answer."""
    store = store_for(stack)
    token = None
    for _ in range(200):
        token = (await store.get_item(task_name, token_sk) or {}).get("token")
        if token:
            break
        await asyncio.sleep(0.05)
    assert token, f"no wait token at {token_sk}"
    sfn = await stack.aws.sfn()
    await sfn.stop_execution(executionArn=arn, error="Test", cause="the operator pulled it")
    await store.send_success(str(token), {"ignored": True})
    for _ in range(100):
        if (await sfn.describe_execution(executionArn=arn))["status"] == "ABORTED":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the execution did not end ABORTED")


async def _replayed(store, task_name: str, folder) -> tuple[object, dict]:
    ledger = await export_ledger(store, task_name)
    await export_objects(store, ledger, folder)
    return replay(ledger, folder_loader(folder)), await store.get_task(task_name)


async def test_a_sync_task_stopped_mid_task_resumes_at_its_next_round(stack, tmp_path):
    # GIVEN a sync task of 3 rounds whose execution is stopped once round 0 has closed
    cfg = TaskConfig.parse(
        {"task_name": "rs", "clients": list(CLIENTS), "rounds": 3, "round_timeout_s": 120}
    )
    store = store_for(stack)
    first = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    clients = clients_for(stack, CLIENTS, (10, 30, 60))
    for client in clients:
        await client.submit(await next_notice(client, "rs"))
    for _ in range(200):
        if int((await store.get_task("rs") or {}).get("head_version", 0)) == 1:
            break
        await asyncio.sleep(0.05)
    await _abort(stack, first, "rs", keys.round_sk(1))

    # WHEN the operator resumes it
    resumed = await cli(stack, "task", "resume", "rs", "--json")
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout)
    # THEN a new execution (attempt 2) opens round 1, the clients finish the task
    assert out["attempt"] == 2 and out["version"] == 1 and out["after"] == "ABORTED"
    assert out["execution_arn"] != first and out["execution_arn"].endswith("-2")
    again = await cli(stack, "task", "resume", "rs")
    assert again.exit_code == 1  # the new attempt runs: nothing to resume
    assert again.output.count("error:") == 1 and "still RUNNING" in again.output
    for round_id in (1, 2):
        for client in clients:
            notice = await next_notice(client, "rs")
            while notice.round_id < round_id:  # round 1 was announced by both attempts
                notice = await next_notice(client, "rs")
            assert notice.round_id == round_id
            await client.submit(notice)
    desc = await wait_execution(stack, out["execution_arn"], timeout_s=60)
    assert desc["status"] == "SUCCEEDED"

    # AND the ledger over both attempts replays to the final model, version by version
    result, task = await _replayed(store, "rs", tmp_path / "objects")
    assert result.ok, result.problems or result.mismatches
    assert [c.version for c in result.checks] == [1, 2, 3]
    final = await store.get_object(keys.final_key("rs"))
    assert result.final_sha256 == hashlib.sha256(final).hexdigest() == task["final_sha256"]
    # AND the status lists the attempts
    status = await cli(stack, "task", "status", "rs", "--json")
    shown = json.loads(status.stdout)
    assert shown["attempt"] == 2
    assert [(a["attempt"], a.get("ended")) for a in shown["attempts"]] == [
        (1, "ABORTED"),
        (2, None),
    ]


async def test_an_async_task_stopped_mid_task_resumes_from_its_head(stack, tmp_path):
    # GIVEN an async FedAsync task stopped after 2 of its 5 versions
    cfg = TaskConfig.parse(
        {
            "task_name": "ra",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_versions": 5,
            "max_staleness": 8,
            "heartbeat_s": 120,
        }
    )
    store = store_for(stack)
    first = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    clients = clients_for(stack, CLIENTS, (10, 30, 60))
    by_id = {c.client_id: c for c in clients}
    notices = {c.client_id: await next_notice(c, "ra") for c in clients}

    async def submit(client_id: str, k: int) -> None:
        weights = {n: w + 0.1 * (k + 1) for n, w in initial_model().items()}
        await by_id[client_id].submit(notices[client_id], weights, update_id=f"{client_id}-{k}")

    async def head_at(version: int) -> None:
        for _ in range(200):
            if int((await store.get_task("ra") or {}).get("head_version", 0)) >= version:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the head never reached {version}")

    await submit("a", 0)
    await submit("b", 1)
    await head_at(2)
    await _abort(stack, first, "ra", keys.TASK_SK)
    # WHEN it is resumed
    resumed = await cli(stack, "task", "resume", "ra", "--json")
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout)
    assert out["attempt"] == 2 and out["version"] == 2
    # THEN every silo hears the head again and the task runs on to version 5
    for client in clients:
        notice = await next_notice(client, "ra")
        while notice.version < 2:  # a go-ahead of the first attempt, still queued
            notice = await next_notice(client, "ra")
        assert notice.version == 2
        notices[client.client_id] = notice
    for k, client_id in enumerate(("c", "a", "b"), start=2):
        await submit(client_id, k)
    desc = await wait_execution(stack, out["execution_arn"], timeout_s=60)
    assert desc["status"] == "SUCCEEDED"
    result, task = await _replayed(store, "ra", tmp_path / "objects")
    assert result.ok, result.problems or result.mismatches
    assert [c.version for c in result.checks] == [1, 2, 3, 4, 5]
    assert result.final_sha256 == task["final_sha256"]


async def test_a_task_that_finished_is_not_resumed(stack):
    cfg = TaskConfig.parse({"task_name": "done", "clients": list(CLIENTS), "rounds": 1})
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    for client in clients_for(stack, CLIENTS, (10, 30, 60)):
        await client.submit(await next_notice(client, "done"))
    assert (await wait_execution(stack, arn, timeout_s=60))["status"] == "SUCCEEDED"
    refused = await cli(stack, "task", "resume", "done")
    assert refused.exit_code == 1
    assert refused.output.count("error:") == 1
    assert "finished" in refused.output and "nothing to resume" in refused.output
