"""Bring your own Keras model, on the embedded stack with the real server: a user's
functional CNN given as `--trainer examples.keras_cnn:factory`, and `model.fit` joining
a task through `FederatedCallback`. Needs TensorFlow (the tf extra)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from client.config import ClientConfig
from client.data import Dataset, demo_silo, hold_out
from client.run import run_client
from client.trainers import get_trainer
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec, StackSpec
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import store_for, wait_execution

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

SILOS = tuple(f"silo-{i}" for i in range(5))
CNN = "examples.keras_cnn:factory"


def silo_config(stack: EmbeddedStack, task: str, client_id: str, **over: Any) -> ClientConfig:
    e = stack.endpoints
    key = stack.credentials(f"client:{client_id}")
    fields: dict[str, Any] = {
        "task_name": task,
        "client_id": client_id,
        "endpoint_url": e.endpoint_url,
        "queue_url": e.client_queue_urls[client_id],
        "bucket": e.bucket,
        "table": e.table,
        "aws_access_key_id": key.access_key_id,
        "aws_secret_access_key": key.secret_access_key,
        "heartbeat_interval_s": 2.0,
        "visibility_timeout_s": 60,
        "wait_time_s": 1,
    }
    return ClientConfig(**(fields | over))


def cnn_accuracy(weights: dict[str, np.ndarray], data: Dataset) -> float:
    """The example's CNN evaluated in plain numpy, not Keras: 3x3 'same' convolution +
    ReLU, 2x2 max pooling, flatten (channels last), dense; the argmax is the class."""
    images = data.x.reshape(-1, 8, 8).astype(np.float64)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    kernel, bias = weights["conv/kernel"].astype(np.float64), weights["conv/bias"]
    maps = np.zeros((len(images), 8, 8, kernel.shape[-1]))
    for di in range(3):
        for dj in range(3):
            patch = padded[:, di : di + 8, dj : dj + 8, None]
            maps += patch * kernel[di, dj, 0]
    maps = np.maximum(maps + bias, 0.0)
    pooled = maps.reshape(len(images), 4, 2, 4, 2, -1).max(axis=(2, 4))
    logits = pooled.reshape(len(images), -1) @ weights["classes/kernel"] + weights["classes/bias"]
    return float(np.mean(np.argmax(logits, axis=1) == data.y))


async def test_a_users_functional_cnn_reaches_90_percent_on_the_silos_held_out_splits(
    moto_server, prefix
):
    # GIVEN a sync task of 4 rounds over 5 silos, each holding a non-IID Dirichlet(0.5)
    # share of the 8x8 digits and holding a fifth of it out
    cfg = TaskConfig.parse(
        {"task_name": "digits-cnn", "mode": "sync", "clients": list(SILOS), "rounds": 4,
         "round_timeout_s": 300}
    )  # fmt: skip
    splits = [hold_out(demo_silo(i, len(SILOS), seed=0)[0], 0.2, seed=0) for i in range(5)]
    # AND the user's own functional Keras model with a Conv2D layer, named as a path the
    # client imports (as `--trainer examples.keras_cnn:factory` does), its v0 from the
    # same factory
    initial = get_trainer(CNN, num_classes=10, seed=0).init_weights(0)
    assert list(initial) == ["conv/kernel", "conv/bias", "classes/kernel", "classes/bias"]
    spec = StackSpec(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial)
        # WHEN the five silos train it, two epochs per round, until the task ends
        reports = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_client(
                        silo_config(stack, cfg.task_name, c, epochs=2, seed=i),
                        trainer=get_trainer(CNN, num_features=64, num_classes=10, seed=i),
                        data=train,
                        eval_data=held,
                    )
                    for i, (c, (train, held)) in enumerate(zip(SILOS, splits, strict=True))
                )
            ),
            600,
        )
        desc = await wait_execution(stack, arn, 60)
        final = st_load(await store.get_object(keys.final_key(cfg.task_name)))
    # THEN the task succeeded with every silo contributing to every round
    assert desc["status"] == "SUCCEEDED"
    assert [len(r.updates) for r in reports] == [4] * 5
    assert all(r.outcome == "final" for r in reports)
    # AND each record carries the silo's score of the global model it was given
    assert all("eval_accuracy" in u.metrics for r in reports for u in r.updates)
    # AND the final model, scored independently on the silos' held-out splits
    # (example-weighted, as the server averages), is right on >= 90 % of them
    scores = [cnn_accuracy(final, held) for _, held in splits]
    sizes = [len(held) for _, held in splits]
    assert np.average(scores, weights=sizes) >= 0.90, scores
