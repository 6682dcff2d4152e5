"""A task started from the user's own model (`fedasync model export` of a torch state_dict,
then `fedasync task start --initial-weights`) on the embedded stack: its tensors are the
task's spec, and an update from a model that differs is rejected, naming the first tensor
that differs (`fedasync task status --json` shows the reason)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedasync import logs
from fedasync.cli import app
from fedasync.core import codec, keys
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import clients_for, store_for
from tests.integration.test_taskctl import cli

CLIENTS = ("a", "b", "c")
SYNC_YAML = """\
task_name: byom
clients: [a, b, c]
rounds: 1
min_clients: 1
round_timeout_s: 60
"""


@pytest.fixture
async def stack(moto_server, prefix):
    logs.configure(level="WARNING")
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


def torch_model(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    path = tmp_path / "mlp.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict(), path)
    return path


async def test_updates_unlike_the_users_model_are_rejected_naming_the_first_tensor(
    stack, tmp_path, wait_until
):
    # GIVEN the user's torch model exported, and a sync task started from it
    exported = tmp_path / "model.safetensors"
    result = CliRunner().invoke(
        app, ["model", "export", str(torch_model(tmp_path)), "--out", str(exported)]
    )
    assert result.exit_code == 0, result.output
    (tmp_path / "task.yaml").write_text(SYNC_YAML)
    started = await cli(
        stack, "task", "start", "--config", str(tmp_path / "task.yaml"),
        "--initial-weights", str(exported),
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    store = store_for(stack)
    # THEN version 0 is the user's model, byte for byte
    assert await store.get_object(keys.global_key("byom", 0)) == codec.encode(
        codec.read_file(exported)
    )
    # WHEN a renames 0.weight, b sends a 2-element 0.bias, c sends 0.weight as float64
    user = codec.read_file(exported)
    wrong = {
        "a": {"0.kernel": user["0.weight"], "0.bias": user["0.bias"]},
        "b": {"0.weight": user["0.weight"], "0.bias": user["0.bias"][:2]},
        "c": {"0.weight": user["0.weight"].astype(np.float64), "0.bias": user["0.bias"]},
    }
    for client in clients_for(stack, CLIENTS, (10, 10, 10)):
        await client.submit(await first_notice(client), wrong[client.client_id])

    # THEN each is rejected, its detail naming the first tensor that differs
    async def rejections():
        out = await cli(stack, "task", "status", "byom", "--json")
        found = json.loads(out.stdout)["updates"]["rejections"]
        return found if len(found) == 3 else None

    by_client = {r["client_id"]: r for r in await wait_until(rejections, timeout_s=60)}
    assert by_client["a"]["reason"] == "names"
    assert "tensor '0.weight' of the global model is missing" in by_client["a"]["detail"]
    assert by_client["b"]["reason"] == "shape"
    assert "tensor '0.bias' of shape (2,); the global model has (3,)" in by_client["b"]["detail"]
    assert by_client["c"]["reason"] == "dtype"
    assert "tensor '0.weight' of dtype float64" in by_client["c"]["detail"]
    assert all("from client" in r["detail"] and "'byom'" in r["detail"] for r in by_client.values())


async def test_initial_weights_that_no_update_could_match_create_no_task(stack, tmp_path):
    # GIVEN a model with a NaN, and a sync task config
    bad = tmp_path / "nan.safetensors"
    codec.write_file({"w": np.array([0.0, np.nan], np.float32)}, bad)
    (tmp_path / "task.yaml").write_text(SYNC_YAML)
    # WHEN the task is started from it
    out = await cli(
        stack,
        "task",
        "start",
        "--config",
        str(tmp_path / "task.yaml"),
        "--initial-weights",
        str(bad),
    )
    # THEN one error line names the file and the tensor, exit 1, and nothing was created
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [
        f"error: initial weights {str(bad)!r} has 1 NaN/Inf value(s) in tensor 'w'"
    ]
    assert await store_for(stack).get_task("byom") is None
