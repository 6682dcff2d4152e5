"""`fedasync task start|status|stop` on the embedded stack: the real ASL, handlers and CLI.

CLI calls run in a worker thread (`asyncio.to_thread`) because each one runs its own
event loop, while the stack's pumps run on the test's loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedasync import logs
from fedasync.aws.records import serialize_item
from fedasync.cli import app
from fedasync.core import codec, keys
from fedasync.core.errors import FedAsyncError
from fedasync.core.messages import Heartbeat
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import clients_for, store_for

CLIENTS = ("a", "b")


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
    # as the silo writes it: into the inbox (the server's store never writes there)
    ddb = await store.aws.dynamodb()
    item = {**beat.model_dump(exclude_none=True), "sk": beat.sk}
    await ddb.put_item(TableName=store.where.table, Item=serialize_item(item))


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
    # one execution per attempt, named {task}-{incarnation: 10 hex digits}-{attempt}
    assert re.fullmatch(rf".*:execution:{stack.spec.prefix}-fl-task:ops-[0-9a-f]{{10}}-1", arn)
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


async def test_a_stop_that_cannot_publish_a_corrupt_head_says_why_and_completes_when_retried(
    stack, tmp_path, wait_until
):
    # GIVEN an async task at version 1 (a's update), whose version-1 object is then
    # rewritten in the bucket: the head SHA-256 the server recorded no longer matches it
    config = write_config(tmp_path, "task.yaml", ASYNC_YAML.format(alpha=0.5))
    started = await cli(stack, "task", "start", "--config", str(config), *SMALL_MODEL, "--json")
    assert started.exit_code == 0, started.output
    arn = json.loads(started.stdout)["execution_arn"]
    store = store_for(stack)
    a, _ = clients_for(stack, CLIENTS, (10, 10))
    await a.submit(await first_notice(a))
    await wait_until(lambda: _head_is(store, "ops", 1), timeout_s=20)
    v1_key = keys.global_key("ops", 1)
    v1 = await store.get_object(v1_key)
    v1_sha = hashlib.sha256(v1).hexdigest()  # an independent hash of the committed bytes
    assert (await store.get_task("ops"))["head_sha256"] == v1_sha
    rewritten = codec.encode({"dense/kernel": np.ones((4, 3), np.float32)})
    await store.put_object(v1_key, rewritten, hashlib.sha256(rewritten).hexdigest())
    sfn = await stack.aws.sfn()

    # WHEN the operator stops it, twice, while the object is still corrupt
    for attempt in (1, 2):
        stopped = await cli(stack, "task", "stop", "ops")
        # THEN each says, in one error line and no traceback, what is wrong and what the
        # stop waits for; it does not claim the execution is merely "still RUNNING"
        assert stopped.exit_code == 1, (attempt, stopped.output)
        [line] = stopped.stderr.strip().splitlines()
        assert line.startswith("error: task 'ops' is finished (stopped) at version 1"), line
        for fragment in (
            f"'{v1_key}' no longer matches its recorded SHA-256 {v1_sha}",
            "is corrupt, so it is not published as the final model",
            "run `fedasync task stop ops` again once the object is restored",
        ):
            assert fragment in line, (attempt, line)
        assert "Traceback" not in stopped.output and "still RUNNING" not in stopped.output
        # AND the decision is kept, nothing corrupt is published, the execution still waits
        task = await store.get_task("ops")
        assert (task["finished"], task["final_version"], task["final_sha256"]) == (
            "stopped",
            1,
            v1_sha,
        )
        with pytest.raises(FedAsyncError, match="missing from the model bucket"):
            await store.get_object(keys.final_key("ops"))
        assert (await sfn.describe_execution(executionArn=arn))["status"] == "RUNNING"

    # WHEN the committed bytes are put back and the operator stops it once more
    await store.put_object(v1_key, v1, v1_sha)
    again = await cli(stack, "task", "stop", "ops", "--json")
    # THEN the stop completes: version 1 is final.safetensors, the execution SUCCEEDED,
    # and the silo hears the final notice
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert (out["how"], out["reason"], out["final_version"]) == ("resumed", "stopped", 1)
    assert out["execution"]["status"] == "SUCCEEDED"
    final = await store.get_object(keys.final_key("ops"))
    assert hashlib.sha256(final).hexdigest() == v1_sha
    notice = await go_ahead_final(a)
    assert (notice.version, notice.sha256) == (1, v1_sha)


async def go_ahead_final(client):
    while not (notice := await first_notice(client)).final:
        pass
    return notice


async def _head_is(store, task_name, version):
    task = await store.get_task(task_name)
    return task is not None and int(task["head_version"]) == version


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
        assert f"error: task 'ghost' does not exist in table '{stack.spec.table}'" in (
            result.output
        )
    assert start.exit_code == 1
    assert "invalid config for task 'x'" in start.output
    assert "alpha: Input should be less than or equal to 1 (got 3)" in start.output


@pytest.mark.parametrize("where", ["prefix", "stack-config"])
async def test_a_task_naming_a_client_without_a_queue_is_refused_at_start(stack, tmp_path, where):

    # GIVEN a stack deployed for clients a and b, and a task for a, zed and b
    config = write_config(
        tmp_path, "t.yaml", "task_name: ghosts\nclients: [a, zed, b, yon]\nrounds: 1\n"
    )
    args = ["task", "start", "--config", str(config)]
    if where == "stack-config":  # the queue list `local up` writes
        names = stack.endpoints
        stack_json = tmp_path / "stack.json"
        stack_json.write_text(names.model_dump_json())
        args += ["--stack-config", str(stack_json)]
    # WHEN the operator starts it
    result = await cli(stack, *args)
    # THEN it exits 1 with one error line naming the clients that have no queue
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: task 'ghosts' names client(s) with no queue in stack {stack.spec.prefix!r}: "
        "zed, yon; add them to the stack's clients (infra/clients.yaml and `cdk deploy`, "
        "or `fedasync local up --clients`)"
    ]
    # AND nothing was created
    assert await store_for(stack).get_task("ghosts") is None


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
