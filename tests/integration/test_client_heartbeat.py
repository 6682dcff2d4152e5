"""Heartbeats keep their cadence while a CPU-bound training step holds a worker thread."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from client.data import Dataset
from client.run import run_client
from client.trainers.base import TrainResult
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core.codec import Weights
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    RUN_TIMEOUT_S,
    Server,
    config,
    server,
    silo,
    stack,
)

TRAIN_S = 3.0
INTERVAL_S = 0.5


class BusyTrainer(NumpyTrainer):
    """A training step that keeps one core busy for TRAIN_S, as TensorFlow does.

    Native kernels (numpy here, TF's ops in the keras trainer) release the GIL while they
    run. A pure-Python loop is not used: with the moto server in this same process it
    measures the test harness's GIL contention, not the client's loop.
    """

    name = "busy"

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[float, float]] = []

    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        start = time.monotonic()
        a = np.random.default_rng(0).standard_normal((256, 256))
        while time.monotonic() - start < TRAIN_S:
            a = np.tanh(a @ a)
        self.spans.append((start, time.monotonic()))
        return super().fit(weights, x, y, epochs=epochs, seed=seed)


async def test_heartbeats_keep_cadence_during_cpu_bound_training(
    stack, server: Server, silo: Dataset, wait_until
):
    # GIVEN a silo heartbeating every 0.5 s and a training step of 3 s of pure CPU
    trainer = BusyTrainer()
    cfg = config(stack, heartbeat_interval_s=INTERVAL_S)
    await server.publish(await server.put_global(1))
    with capture_logs() as logs:
        run = asyncio.create_task(run_client(cfg, trainer=trainer, data=silo))
        # WHEN it trains, the server sees it training
        status = await wait_until(lambda: _status(server, "training"), timeout_s=RUN_TIMEOUT_S)
        assert status["version"] == 1
        await wait_until(server.updates, timeout_s=RUN_TIMEOUT_S)
        await server.publish(await server.put_global(1, final=True))
        report = await asyncio.wait_for(run, RUN_TIMEOUT_S)
    # THEN heartbeats went out all through training, never more than 1.5 intervals apart
    [(start, end)] = trainer.spans
    during = [t for t in report.heartbeats if start <= t <= end]
    assert len(during) >= int(TRAIN_S / (1.5 * INTERVAL_S)) - 1
    gaps = [b - a for a, b in zip(report.heartbeats, report.heartbeats[1:], strict=False)]
    assert max(gaps) <= 1.5 * INTERVAL_S, gaps
    # AND every one of them was written (a beat that cannot be written in time is logged)
    assert [e for e in logs if e["event"] == "client.heartbeat_failed"] == []


async def _status(server: Server, wanted: str) -> dict[str, Any] | None:
    item = await server.records.get("digits", "HEARTBEAT#silo-a")
    return item if item is not None and item["status"] == wanted else None
