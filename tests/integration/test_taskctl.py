"""`fedasync task start|status|stop` on the embedded stack: the real ASL, handlers and CLI.

CLI calls run in a worker thread (`asyncio.to_thread`) because each one runs its own
event loop, while the stack's pumps run on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedasync import logs
from fedasync.cli import app
from fedasync.core import codec, keys
from fedasync.core.messages import Heartbeat
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec, StackSpec
from fedasync.taskctl import StackConfig
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import clients_for, store_for

CLIENTS = ("a", "b")


@pytest.fixture
async def stack(moto_server, prefix):
    logs.configure(level="WARNING")  # bind the real stderr before CliRunner swaps it
    spec = StackSpec(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


def cli(stack: EmbeddedStack, *args: str):
    # as an operator runs it: with the stack config `local up` writes (the operator's key)
    config = StackConfig.from_endpoints(stack.endpoints, stack.spec.prefix)
    path = Path(tempfile.mkdtemp()) / "stack.json"
    path.write_text(config.model_dump_json(exclude_none=True))
    where = ["--endpoint", str(stack.endpoints.endpoint_url), "--prefix", stack.spec.prefix]
    return asyncio.to_thread(CliRunner().invoke, app, [*args, *where, "--stack-config", str(path)])


def write_config(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


ASYNC_YAML = """\
task_name: ops
mode: async
clients: [a, b]
alpha: {alpha}
max_versions: 50
max_staleness: 8
heartbeat_s: 120
deadline_s: 600
"""
SMALL_MODEL = ["--trainer", "numpy", "--seed", "3", "--num-features", "4", "--num-classes", "3"]


async def put_heartbeat(store, client_id: str, expires_in_s: float, status: str) -> None:
    now = time.time()
    beat = Heartbeat(
        task_name="ops",
        client_id=client_id,
        sent_at=now,
        expires_at=int(now + expires_in_s),
        status=status,
    )
    await store.put_item({**beat.model_dump(exclude_none=True), "sk": beat.sk})


async def test_async_task_start_status_stop_ends_succeeded_with_final_model(
    stack, tmp_path, wait_until
):
    # GIVEN an async task config and the operator's start command, issued twice
    config = write_config(tmp_path, "task.yaml", ASYNC_YAML.format(alpha=0.5))
    first = await cli(stack, "task", "start", "--config", str(config), *SMALL_MODEL, "--json")
    again = await cli(stack, "task", "start", "--config", str(config), *SMALL_MODEL, "--json")
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    arn = json.loads(first.stdout)["execution_arn"]
    assert arn.endswith(f":{stack.spec.prefix}-fl-task:ops")
    assert json.loads(again.stdout)["execution_arn"] == arn
    # AND a different config under the same name is refused
    other = write_config(tmp_path, "other.yaml", ASYNC_YAML.format(alpha=0.3))
    clash = await cli(stack, "task", "start", "--config", str(other), *SMALL_MODEL)
    assert clash.exit_code == 1
    assert "task 'ops' already exists with a different config" in clash.output

    # WHEN client 'a' heartbeats (b's heartbeat expired), a sends a good update and
    # b an update whose kernel has 5 rows where the global model has 4
    store = store_for(stack)
    await put_heartbeat(store, "a", 60, "training")
    await put_heartbeat(store, "b", -5, "training")
    a, b = clients_for(stack, CLIENTS, (10, 10))
    na, nb = await first_notice(a), await first_notice(b)
    await a.submit(na)
    bad = {"dense/kernel": np.zeros((5, 3), np.float32), "dense/bias": np.zeros(3, np.float32)}
    await b.submit(nb, bad)

    async def decided():
        items = await store.query_prefix("ops", keys.UPDATE_PREFIX)
        return len(items) == 2 and all(i.get("verdict") for i in items)

    await wait_until(decided, timeout_s=20)
    status = await cli(stack, "task", "status", "ops", "--json")

    # THEN status reports mode, version, alive clients, the verdicts and the execution
    assert status.exit_code == 0, status.output
    out = json.loads(status.stdout)
    assert (out["mode"], out["strategy"], out["version"]) == ("async", "fedasync", 1)
    assert out["clients"]["alive"] == ["a"]
    assert (out["updates"]["accepted"], out["updates"]["rejected"]) == (1, 1)
    [rejection] = out["updates"]["rejections"]
    assert (rejection["client_id"], rejection["reason"]) == ("b", "shape")
    assert out["execution"]["status"] == "RUNNING"
    table = await cli(stack, "task", "status", "ops")
    assert "alive clients" in table.stdout
    assert "a of 2" in table.stdout
    assert "shape" in table.stdout

    # WHEN the operator stops the task
    stopped = await cli(stack, "task", "stop", "ops")

    # THEN the execution SUCCEEDED and version 1 is the final model
    assert stopped.exit_code == 0, stopped.output
    assert "execution SUCCEEDED" in stopped.stdout
    sfn = await stack.aws.sfn()
    assert (await sfn.describe_execution(executionArn=arn))["status"] == "SUCCEEDED"
    task = await store.get_task("ops")
    assert (task["finished"], task["final_version"], task["status"]) == ("stopped", 1, "SUCCEEDED")
    final = await store.get_object(keys.final_key("ops"))
    v1 = await store.get_object(keys.global_key("ops", 1))
    assert codec.sha256_bytes(final) == codec.sha256_bytes(v1) == task["head_sha256"]
    # AND stopping again reports how it ended
    twice = await cli(stack, "task", "stop", "ops")
    assert twice.exit_code == 0, twice.output
    assert "already ended" in twice.stdout


async def test_sync_task_stop_writes_final_model_and_ends_the_execution_succeeded(
    stack, tmp_path, wait_until
):
    # GIVEN a sync task of 3 rounds whose round 0 is open
    config = write_config(tmp_path, "sync.yaml", "task_name: rounds\nclients: [a, b]\nrounds: 3\n")
    started = await cli(stack, "task", "start", "--config", str(config), *SMALL_MODEL, "--json")
    assert started.exit_code == 0, started.output
    arn = json.loads(started.stdout)["execution_arn"]
    store = store_for(stack)
    a, _ = clients_for(stack, CLIENTS, (10, 10))
    assert (await first_notice(a)).round_id == 0

    # WHEN the operator stops it
    stopped = await cli(stack, "task", "stop", "rounds", "--json")

    # THEN v0 is final, clients hear the final notice, and the open round's wait is
    # answered {"finished": true}: the execution ends SUCCEEDED with reason 'stopped'
    assert stopped.exit_code == 0, stopped.output
    out = json.loads(stopped.stdout)
    assert (out["how"], out["reason"], out["final_version"]) == ("callback", "stopped", 0)
    sfn = await stack.aws.sfn()
    assert (await sfn.describe_execution(executionArn=arn))["status"] == "SUCCEEDED"
    task = await wait_until(lambda: _status_is(store, "rounds", "SUCCEEDED"))
    assert (task["finished"], task["final_version"]) == ("stopped", 0)
    final = await store.get_object(keys.final_key("rounds"))
    assert codec.sha256_bytes(final) == task["initial_sha256"]
    assert (await first_notice(a)).final


async def test_unknown_task_and_invalid_config_are_clear_errors(stack, tmp_path):
    # GIVEN no task named 'ghost', and a config with an out-of-range alpha
    bad = write_config(tmp_path, "bad.yaml", "task_name: x\nmode: async\nclients: [a]\nalpha: 3\n")
    # WHEN the operator asks for it, stops it, or starts the bad config
    status = await cli(stack, "task", "status", "ghost")
    stop = await cli(stack, "task", "stop", "ghost")
    start = await cli(stack, "task", "start", "--config", str(bad))
    # THEN each exits 1 and says what is wrong
    for result in (status, stop):
        assert result.exit_code == 1
        assert f"error: task 'ghost' does not exist in table '{stack.spec.table_name}'" in (
            result.output
        )
    assert start.exit_code == 1
    assert "invalid config for task 'x'" in start.output
    assert "alpha: Input should be less than or equal to 1 (got 3)" in start.output


@pytest.mark.parametrize(
    "command", [["task", "start"], ["task", "status"], ["task", "stop"], ["local", "up"]]
)
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example: fedasync " + " ".join(command) in result.output


async def _status_is(store, task_name, status):
    task = await store.get_task(task_name)
    return task if task and task.get("status") == status else None
