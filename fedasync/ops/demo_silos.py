"""The demo's silos: their data, their (optionally slowed) trainers and their client config."""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from client.config import ClientConfig
from client.data import Dataset, demo_silo
from client.trainers.base import Trainer, TrainResult, proximal_keywords
from fedasync.core.codec import Weights
from fedasync.core.config import TaskConfig

if TYPE_CHECKING:
    from fedasync.ops.demo import DemoOptions


class StragglerTrainer:
    """Wraps a trainer: each update also takes `base_s` x a seeded lognormal(0, sigma) factor.

    Slow silos are the common case in cross-silo FL (uneven hardware, shared clusters);
    this makes them reproducible so sync and async runs can be compared on equal terms.
    The client calls `fit` once per epoch, so one update is `fits_per_update` calls: the
    factor is drawn on an update's first call and its delay is spread over the calls.
    One silo's calls come one at a time (its trainer loop), so a counter is enough.
    """

    def __init__(
        self,
        inner: Trainer,
        sigma: float,
        seed: int,
        base_s: float = 0.5,
        fits_per_update: int = 1,
    ) -> None:
        self.inner, self.name = inner, inner.name
        self._rng = random.Random(seed)  # noqa: S311 - simulated delays, not security
        self._sigma, self._base = sigma, base_s
        self._fits_per_update = max(1, fits_per_update)
        self._calls = 0
        self._delay_s = 0.0

    @staticmethod
    def draw_delay_s(rng: random.Random, base_s: float, sigma: float) -> float:
        """One update's delay: `base_s` x a lognormal(0, sigma) factor."""
        return base_s * math.exp(rng.gauss(0.0, sigma))

    def init_weights(self, seed: int) -> Weights:
        return self.inner.init_weights(seed)

    def fit(
        self,
        weights: Weights,
        x: Any,
        y: Any,
        *,
        epochs: int,
        seed: int,
        proximal_mu: float = 0.0,
        proximal_center: Weights | None = None,
    ) -> TrainResult:
        prox = proximal_keywords(
            self.inner, proximal_mu, weights if proximal_center is None else proximal_center, "demo"
        )
        result = self.inner.fit(weights, x, y, epochs=epochs, seed=seed, **prox)
        if self._calls % self._fits_per_update == 0:
            self._delay_s = self.draw_delay_s(self._rng, self._base, self._sigma)
        self._calls += 1
        time.sleep(self._delay_s / self._fits_per_update)
        return result

    def evaluate(self, weights: Weights, x: Any, y: Any) -> dict[str, float]:
        return self.inner.evaluate(weights, x, y)


class AttackTrainer:
    """Wraps a trainer into a poisoning silo: each update it sends is
    x_global + factor * (x_local - x_global), x_global the model its update started from.
    A factor of -10 (the demo's) both flips the sign of the honest step and scales it, the
    attack robust aggregation is meant to survive (Blanchard et al. 2017; Yin et al. 2018).

    The client calls `fit` once per epoch (`fits_per_update` calls per update): the global
    model is the weights of an update's first call, the attack is applied on its last."""

    def __init__(self, inner: Trainer, factor: float, fits_per_update: int = 1) -> None:
        self.inner, self.name = inner, inner.name
        self._factor = factor
        self._fits_per_update = max(1, fits_per_update)
        self._calls = 0
        self._start: Weights = {}

    def init_weights(self, seed: int) -> Weights:
        return self.inner.init_weights(seed)

    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        if self._calls % self._fits_per_update == 0:
            self._start = {k: np.array(v, copy=True) for k, v in weights.items()}
        self._calls += 1
        result = self.inner.fit(weights, x, y, epochs=epochs, seed=seed)
        if self._calls % self._fits_per_update:
            return result
        poisoned = {
            k: (g + self._factor * (result.weights[k] - g)).astype(g.dtype)
            for k, g in self._start.items()
        }
        return TrainResult(poisoned, result.num_examples, result.metrics)

    def evaluate(self, weights: Weights, x: Any, y: Any) -> dict[str, float]:
        return self.inner.evaluate(weights, x, y)


def demo_data(opts: DemoOptions) -> tuple[list[Dataset], Dataset]:
    """Each silo's share of the digits training split, and the shared held-out split."""
    splits = [
        demo_silo(
            i,
            opts.clients,
            alpha=opts.dirichlet_alpha,
            seed=opts.seed,
            kind=opts.partition,
            shards_per_client=opts.shards_per_client,
        )
        for i in range(opts.clients)
    ]
    return [train for train, _ in splits], splits[0][1]


def silo_trainer(trainer: Trainer, opts: DemoOptions, index: int) -> Trainer:
    """Silo `index`'s trainer: the last `opts.attackers` silos poison their updates."""
    if index >= opts.clients - opts.attackers:
        trainer = AttackTrainer(trainer, opts.attack_factor, fits_per_update=opts.epochs)
    if not opts.train_seconds:
        return trainer
    sigma = opts.stragglers_sigma or 0.0
    return StragglerTrainer(
        trainer,
        sigma,
        seed=opts.silo_seed(index),
        base_s=opts.train_seconds,
        fits_per_update=opts.epochs,  # the client fits one epoch per call
    )


def _client_keys(e: Any, client_id: str) -> dict[str, Any]:
    """The silo's own access key, when the stack gave it one."""
    credentials = e.principals.get(f"client:{client_id}")
    if credentials is None:
        return {}
    return {
        "aws_access_key_id": credentials.access_key_id,
        "aws_secret_access_key": credentials.secret_access_key,
    }


def client_config(opts: DemoOptions, cfg: TaskConfig, e: Any, index: int) -> ClientConfig:
    client_id = cfg.clients[index]
    return ClientConfig(
        task_name=cfg.task_name,
        client_id=client_id,
        deployment=e.model_copy(update={"principals": {}}),  # the silo's own key only:
        **_client_keys(e, client_id),
        heartbeat_interval_s=5.0,
        visibility_timeout_s=60,
        wait_time_s=1,
        epochs=opts.epochs,
        seed=opts.silo_seed(index),
    )
