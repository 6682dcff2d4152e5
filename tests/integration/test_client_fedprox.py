"""FedProx through the real client loop on the embedded stack: the notice's proximal_mu
reaches every epoch's fit with the notice's model as the centre; a trainer that cannot
apply it refuses the task before training, and nothing is uploaded.

The test plays the server as tests/integration/test_client_run.py does (its fixtures)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from client.run import run_client
from client.trainers import TrainerSetupError, TrainResult
from client.trainers.numpy_trainer import NumpyTrainer
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    RUN_TIMEOUT_S,
    Server,
    config,
    end_task_after,
    server,
    silo,
    stack,
)


class RecordingTrainer:
    """The numpy trainer, remembering what each `fit` was given."""

    name = "recording"

    def __init__(self) -> None:
        self.inner = NumpyTrainer()
        self.calls: list[dict[str, Any]] = []

    def init_weights(self, seed: int):
        return self.inner.init_weights(seed)

    def fit(self, weights, x, y, *, epochs, seed, proximal_mu=0.0, proximal_center=None):
        self.calls.append({"weights": weights, "mu": proximal_mu, "center": proximal_center})
        return self.inner.fit(
            weights, x, y, epochs=epochs, seed=seed, proximal_mu=proximal_mu,
            proximal_center=proximal_center,
        )  # fmt: skip

    def evaluate(self, weights, x, y):
        return self.inner.evaluate(weights, x, y)


class PlainTrainer:
    """A trainer from before FedProx: no proximal keywords."""

    name = "plain"

    def __init__(self) -> None:
        self.inner = NumpyTrainer()
        self.fits = 0

    def init_weights(self, seed: int):
        return self.inner.init_weights(seed)

    def fit(self, weights, x, y, *, epochs, seed) -> TrainResult:
        self.fits += 1
        return self.inner.fit(weights, x, y, epochs=epochs, seed=seed)

    def evaluate(self, weights, x, y):
        return self.inner.evaluate(weights, x, y)


async def _announce(server: Server, version: int, mu: float):
    notice = await server.put_global(version)
    notice = notice.model_copy(update={"proximal_mu": mu})
    await server.publish(notice)
    return notice


def _global(version: int):
    return NumpyTrainer().init_weights(seed=version)  # what Server.put_global uploads


async def test_every_epoch_is_pulled_towards_the_notice_s_model(stack, server, silo, wait_until):
    # GIVEN round 1 announced with proximal_mu 0.05, and a silo training 2 epochs
    await _announce(server, 1, 0.05)
    trainer = RecordingTrainer()
    task = asyncio.create_task(run_client(config(stack, epochs=2), trainer=trainer, data=silo))
    # WHEN its update is recorded and the task ends
    await end_task_after(server, server.updates, wait_until, 1)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN both epochs were given mu 0.05 and, as the centre, the model of the notice
    assert [c["mu"] for c in trainer.calls] == [0.05, 0.05]
    for call in trainer.calls:
        for name, array in _global(1).items():
            np.testing.assert_array_equal(call["center"][name], array)
    # AND the second epoch started from the first epoch's model, not from the centre
    assert not np.array_equal(
        trainer.calls[1]["weights"]["dense/kernel"], _global(1)["dense/kernel"]
    )
    assert len(await server.updates()) == 1


async def test_without_fedprox_the_trainer_is_called_as_before(stack, server, silo, wait_until):
    # GIVEN a notice with mu 0 (the field absent from its JSON)
    await _announce(server, 1, 0.0)
    trainer = RecordingTrainer()
    task = asyncio.create_task(run_client(config(stack, epochs=1), trainer=trainer, data=silo))
    await end_task_after(server, server.updates, wait_until, 1)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN fit got no proximal keywords at all (its defaults)
    assert [(c["mu"], c["center"]) for c in trainer.calls] == [(0.0, None)]


async def test_a_trainer_that_cannot_apply_mu_refuses_the_round_and_uploads_nothing(
    stack, server, silo
):
    # GIVEN round 1 announced with proximal_mu 0.1, and a silo whose trainer has no keywords
    await _announce(server, 1, 0.1)
    trainer = PlainTrainer()
    # WHEN the client runs
    with capture_logs() as logs, pytest.raises(TrainerSetupError) as refused:
        await asyncio.wait_for(run_client(config(stack), trainer=trainer, data=silo), RUN_TIMEOUT_S)
    # THEN the run stops with the reason, having trained and uploaded nothing
    assert refused.value.reason == "proximal_unsupported"
    assert "task 'digits' asks for FedProx (proximal_mu=0.1)" in refused.value.message
    assert any(e["event"] == "client.proximal_unsupported" for e in logs)
    assert trainer.fits == 0
    assert await server.updates() == []
    assert await server.local_objects() == []
