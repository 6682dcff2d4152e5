"""Bring your own model, PyTorch: an MLP (examples/torch_mlp.py) trains through a sync
round and an async task on the embedded stack, with the real server and real clients;
data that does not fit the task's model stops a silo before anything is uploaded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from client.config import ClientConfig  # noqa: E402
from client.data import Dataset, demo_silo, hold_out  # noqa: E402
from client.run import run_client  # noqa: E402
from examples.torch_mlp import factory, mlp, run_silo, trainer_for  # noqa: E402
from fedasync.core import codec, keys  # noqa: E402
from fedasync.core.config import TaskConfig  # noqa: E402
from fedasync.core.errors import SchemaError  # noqa: E402
from fedasync.deployment import Deployment  # noqa: E402
from fedasync.local.stack import EmbeddedStack  # noqa: E402
from fedasync.resources import ClientSpec  # noqa: E402
from fedasync.server.store import ServerStore  # noqa: E402
from fedasync.server.tasks import start_task  # noqa: E402
from tests.integration.test_client_cli import _stack_config  # noqa: E402
from tests.integration.test_client_run import (  # noqa: E402, F401 - fixtures
    CLIENT,
    RUN_TIMEOUT_S,
    TASK,
    Server,
    server,
    stack,
)
from tests.integration.test_server_sync import fedavg_by_hand, wait_execution  # noqa: E402

pytestmark = pytest.mark.torch
SILOS = ("silo-0", "silo-1")
MLP_NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.fixture
async def full_stack(moto_server, prefix) -> AsyncIterator[EmbeddedStack]:
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as running:
        yield running


def _client(stack: EmbeddedStack, task: str, index: int) -> ClientConfig:
    e, client_id = stack.endpoints, SILOS[index]
    keys_ = stack.credentials(f"client:{client_id}")
    return ClientConfig(
        task_name=task,
        client_id=client_id,
        endpoint_url=e.endpoint_url,
        region=e.region,
        queue_url=e.client_queue_urls[client_id],
        bucket=e.bucket,
        table=e.table,
        aws_access_key_id=keys_.access_key_id,
        aws_secret_access_key=keys_.secret_access_key,
        heartbeat_interval_s=1.0,
        visibility_timeout_s=30,
        wait_time_s=1,
        epochs=1,
        seed=index,
    )


async def _two_silos(stack: EmbeddedStack, task: str, spec: codec.ModelSpec) -> list[Any]:
    """silo-0 through the example's DataLoader path, silo-1 as the plugin factory builds it."""
    train_1, held_1 = hold_out(demo_silo(1, 2, alpha=0.5, seed=0)[0], 0.2, seed=1)
    return await asyncio.wait_for(
        asyncio.gather(
            run_silo(_client(stack, task, 0), "digits:0/2"),
            run_client(
                _client(stack, task, 1), trainer=factory(spec, {}), data=train_1, eval_data=held_1
            ),
        ),
        120,
    )


def _accuracy(weights: codec.Weights, test: Dataset) -> float:
    module = mlp()
    trainer_for(module, {}).load(weights)
    with torch.no_grad():
        logits = module(torch.from_numpy(test.x))
    return float((logits.argmax(dim=1).numpy() == test.y).mean())


async def test_a_torch_mlp_trains_through_a_sync_round_to_the_fedavg_of_its_silos(full_stack):
    # GIVEN a one-round sync task whose version 0 is the MLP's state_dict
    cfg = TaskConfig.parse(
        {"task_name": "torch-sync", "clients": list(SILOS), "rounds": 1, "round_timeout_s": 90}
    )
    store = ServerStore(full_stack.aws, full_stack.endpoints)
    x0 = factory(None, {}).init_weights(0)
    arn = await start_task(store, full_stack.endpoints.state_machine_arn, cfg, x0)
    # WHEN both silos run their real client loops until the task ends
    reports = await _two_silos(full_stack, cfg.task_name, codec.spec_of(x0))
    # THEN the execution succeeded and each silo uploaded one update of the MLP's tensors
    assert (await wait_execution(full_stack, arn))["status"] == "SUCCEEDED"
    assert [len(r.updates) for r in reports] == [1, 1]
    records = [r.updates[0] for r in reports]
    locals_ = [codec.decode(await store.get_object(r.s3_key)) for r in records]
    assert all(list(m) == MLP_NAMES for m in locals_)
    assert not np.array_equal(locals_[0]["0.weight"], x0["0.weight"])
    # AND each reported its scores of the global model on its held-out part
    assert all({"eval_loss", "eval_accuracy", "train_loss"} <= set(r.metrics) for r in records)
    # AND version 1 is the FedAvg of the two local models, weighted by their examples
    expected = fedavg_by_hand(locals_, tuple(r.num_examples for r in records))
    got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
    assert list(got) == MLP_NAMES
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7)


async def test_a_torch_mlp_trains_through_an_async_task_to_its_last_version(full_stack):
    # GIVEN an async FedAsync task of 4 versions over the MLP
    cfg = TaskConfig.parse(
        {
            "task_name": "torch-async",
            "mode": "async",
            "clients": list(SILOS),
            "max_versions": 4,
            "heartbeat_s": 60,
            "deadline_s": 300,
        }
    )
    store = ServerStore(full_stack.aws, full_stack.endpoints)
    x0 = factory(None, {}).init_weights(0)
    arn = await start_task(store, full_stack.endpoints.state_machine_arn, cfg, x0)
    # WHEN both silos run until the final notice
    reports = await _two_silos(full_stack, cfg.task_name, codec.spec_of(x0))
    # THEN the task succeeded, with at least 4 updates between them
    assert (await wait_execution(full_stack, arn))["status"] == "SUCCEEDED"
    assert sum(len(r.updates) for r in reports) >= 4
    assert all(r.outcome == "final" for r in reports)
    # AND the final model is the MLP, and it classifies the held-out digits far better
    # than version 0 (chance is 0.1)
    final = codec.decode(await store.get_object(keys.final_key(cfg.task_name)))
    assert list(final) == MLP_NAMES
    test = demo_silo(0, 2, alpha=0.5, seed=0)[1]
    assert _accuracy(x0, test) < 0.3
    assert _accuracy(final, test) > 0.6


async def test_a_torch_silo_with_data_of_the_wrong_shape_uploads_nothing(stack, server):
    # GIVEN round 1's global model: the MLP, which takes 64 features
    weights = factory(None, {}).init_weights(1)
    await server.publish(await server.put_global(1, weights))
    silo = Dataset(np.zeros((20, 30), np.float32), np.zeros(20, np.int64), "data file 'x.npz'")
    cfg = ClientConfig(**(_cli_client(stack)))
    # WHEN a silo with 30 features per example runs the plugin's trainer
    # THEN it stops with an error naming the data, its shape and the model's complaint
    with pytest.raises(
        SchemaError,
        match=r"task 'digits': data file 'x\.npz' has examples of "
        r"shape \(30,\); the task's model does not take them: mat1 and mat2",
    ):
        await asyncio.wait_for(
            run_client(cfg, trainer=factory(codec.spec_of(weights), {}), data=silo), RUN_TIMEOUT_S
        )
    # AND nothing was uploaded or recorded, and the notice waits on the queue
    assert await server.local_objects() == []
    assert await server.updates() == []
    assert sum(await server.queue_depth()) == 1


def _cli_client(stack: EmbeddedStack) -> dict[str, Any]:
    e = stack.endpoints
    cred = stack.credentials(f"client:{CLIENT}")
    return {
        "task_name": TASK,
        "client_id": CLIENT,
        "endpoint_url": e.endpoint_url,
        "prefix": stack.spec.prefix,
        "queue_url": e.client_queue_urls[CLIENT],
        "aws_access_key_id": cred.access_key_id,
        "aws_secret_access_key": cred.secret_access_key,
        "heartbeat_interval_s": 0.5,
        "visibility_timeout_s": 2,
        "wait_time_s": 1,
    }


async def test_client_run_with_data_of_the_wrong_feature_shape_is_one_error_line(
    stack, server, tmp_path
):
    # GIVEN round 1's global model (64 features, 10 classes) and a silo file of 30 features
    await server.publish(await server.put_global(1))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 30), np.float32), y=np.arange(20) % 10)
    # WHEN `client run` starts on it
    command = [
        sys.executable,
        "-c",
        "import sys; from client.cli import client_app; sys.exit(client_app())",
        "run",
        "--task",
        TASK,
        "--client-id",
        CLIENT,
        "--trainer",
        "numpy",
        "--data",
        str(bad),
        "--heartbeat-interval",
        "0.5",
        "--visibility-timeout",
        "2",
        "--stack-config",
        _stack_config(stack),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    # THEN it exits 1 with one error line naming the file, the tensor and both shapes
    assert process.returncode == 1
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: data file {str(bad)!r} (examples of shape (30,)) does not fit task "
        f"{TASK!r}: the numpy trainer's model for it has tensor 'dense/kernel' of shape "
        "(30, 10); the task's model has (64, 10)"
    ]
    assert "Traceback" not in stderr.decode()
    # AND nothing was uploaded or recorded; the notice is back on the queue for a retry
    assert await server.local_objects() == []
    assert await server.updates() == []
    assert sum(await server.queue_depth()) == 1
