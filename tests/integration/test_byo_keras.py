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
from fedasync.aws.records import DynamoRecords
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import store_for, wait_execution

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

import keras  # noqa: E402 - only once TensorFlow is known to be there

from client.trainers.keras_model import get_weights  # noqa: E402
from examples import keras_callback as keras_callback_example  # noqa: E402

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


async def store_records(stack: EmbeddedStack, task: str) -> list[dict[str, Any]]:
    return await DynamoRecords(stack.aws, stack.endpoints.table).query_prefix(task, keys.UPDATE_PREFIX)


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
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
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


class WeightsAtEpochStart(keras.callbacks.Callback):
    """What the model starts each epoch from (runs after the federated callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, np.ndarray]] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.seen.append(get_weights(self.model))


async def test_the_callback_joins_an_async_task_from_model_fit(moto_server, prefix):
    # GIVEN an async FedAsync task over one silo that ends at version 4
    cfg = TaskConfig.parse(
        {"task_name": "digits-fit", "mode": "async", "clients": ["silo-0"], "max_versions": 4,
         "max_staleness": 4, "heartbeat_s": 120, "deadline_s": 600}
    )  # fmt: skip
    initial = get_trainer(CNN, seed=0).init_weights(0)
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id="silo-0"),))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial)
        probe = WeightsAtEpochStart()
        # WHEN the user's own script runs model.fit(tf.data, epochs=30) with the callback
        model, history, federated = await asyncio.wait_for(
            asyncio.to_thread(
                keras_callback_example.train,
                cfg.task_name,
                "silo-0",
                data="digits:0/2",
                epochs=30,
                callbacks=[probe],
                config=silo_config(stack, cfg.task_name, "silo-0", heartbeat_interval_s=0.5,
                                   visibility_timeout_s=10),
            ),
            300,
        )  # fmt: skip
        desc = await wait_execution(stack, arn, 60)
        records = await store_records(stack, cfg.task_name)
        globals_ = [
            st_load(await store.get_object(keys.global_key(cfg.task_name, v)))
            for v in range(len(records))
        ]
        final = st_load(await store.get_object(keys.final_key(cfg.task_name)))
        task = await store.get_task(cfg.task_name)
    # THEN the task succeeded, ending at version 4
    assert desc["status"] == "SUCCEEDED"
    assert int(task["head_version"]) == 4
    report = federated.report
    assert report is not None and report.outcome == "final"
    # AND the silo submitted once per epoch, each time on the newest global model (the
    # server's go-ahead on version 4, sent before it saw it was the last, may add a 5th,
    # refused as late)
    epochs = len(history.history["loss"])
    assert sorted(r["base_version"] for r in records) == list(range(epochs))
    assert 4 <= epochs <= 5 and federated.submitted == epochs
    # AND each epoch started from the global model that followed the last submission
    for epoch, start in enumerate(probe.seen):
        for name, tensor in globals_[epoch].items():
            np.testing.assert_array_equal(start[name], tensor)
    # AND fit stopped when the task ended (not after 30 epochs), holding the final model
    for name, tensor in final.items():
        np.testing.assert_array_equal(get_weights(model)[name], tensor)
    # AND heartbeats went on while fit ran
    assert len(report.heartbeats) >= 2


async def test_the_callback_waits_for_each_round_of_a_sync_task_beside_a_plugin_silo(
    moto_server, prefix
):
    # GIVEN a sync task of 3 rounds over two silos: silo-0 joins from its own model.fit
    # (the callback), silo-1 runs the client with the same model as a trainer plugin
    cfg = TaskConfig.parse(
        {"task_name": "digits-mixed", "mode": "sync", "clients": ["silo-0", "silo-1"],
         "rounds": 3, "round_timeout_s": 300}
    )  # fmt: skip
    initial = get_trainer(CNN, seed=0).init_weights(0)
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id="silo-0"),
                                             ClientSpec(client_id="silo-1")))  # fmt: skip
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial)
        probe = WeightsAtEpochStart()
        fitting = asyncio.to_thread(
            keras_callback_example.train, cfg.task_name, "silo-0", data="digits:0/2",
            epochs=30, callbacks=[probe],
            config=silo_config(stack, cfg.task_name, "silo-0", visibility_timeout_s=10),
        )  # fmt: skip
        plugin_silo = run_client(
            silo_config(stack, cfg.task_name, "silo-1"),
            trainer=get_trainer(CNN, num_features=64, num_classes=10, seed=1),
            data=demo_silo(1, 2, seed=0)[0],
        )
        # WHEN both run until the task ends
        (model, history, federated), other = await asyncio.wait_for(
            asyncio.gather(fitting, plugin_silo), 300
        )
        desc = await wait_execution(stack, arn, 60)
        rounds = [
            st_load(await store.get_object(keys.global_key(cfg.task_name, r))) for r in range(3)
        ]
        final = st_load(await store.get_object(keys.final_key(cfg.task_name)))
    # THEN the task succeeded, each silo in each round
    assert desc["status"] == "SUCCEEDED"
    assert federated.report is not None and federated.report.outcome == "final"
    assert sorted(u.round_id for u in federated.report.updates) == [0, 1, 2]
    assert sorted(u.round_id for u in other.updates) == [0, 1, 2]
    # AND fit ran one epoch per round, each from that round's global model, and stopped
    # at the end holding the final model
    assert len(history.history["loss"]) == 3
    for epoch, start in enumerate(probe.seen):
        for name, tensor in rounds[epoch].items():
            np.testing.assert_array_equal(start[name], tensor)
    for name, tensor in final.items():
        np.testing.assert_array_equal(get_weights(model)[name], tensor)
