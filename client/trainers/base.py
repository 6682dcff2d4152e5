"""The one interface every trainer implements: weights in, weights + count + metrics out.

The client loop only ever calls these three methods (from a worker thread), so a new
framework is one module implementing them. Weights are ordered `{name: ndarray}`
mappings, the same the codec writes as safetensors.

A trainer can also come from the user, as a *factory*: `factory(spec, options) -> Trainer`
(see `client.trainers`). `spec` is the task's model (tensor names, shapes, dtypes, from
the global model the silo received), or None when the factory is asked for a task's
initial model; `options` are the client's (`num_features`, `num_classes`, `seed`) and the
user's own (`--trainer-option KEY=VALUE`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedasync.core.codec import ModelSpec, Weights
from fedasync.core.errors import FedAsyncError


@dataclass(frozen=True)
class TrainResult:
    """A local model, how many examples shaped it (the FedAvg weight) and how it did."""

    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """Framework-neutral local training. Methods are blocking; callers run them in a thread."""

    name: str

    def init_weights(self, seed: int) -> Weights:
        """A fresh model (the task's version 0), deterministic for `seed`."""
        ...

    def fit(
        self,
        weights: Weights,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        seed: int,
    ) -> TrainResult:
        """Train from `weights` on (x, y); must not modify `weights` in place."""
        ...

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        """At least `loss` and `accuracy` of `weights` on (x, y)."""
        ...


TrainerFactory = Callable[[ModelSpec | None, Mapping[str, Any]], Trainer]


class TrainerSetupError(FedAsyncError, ValueError):
    """The user's trainer cannot serve this task: its factory does not import or fails,
    or the model it builds is not the task's. Never retried: the run stops at once,
    saying what and where, and nothing is uploaded."""

    reason = "trainer_setup"


class TrainerFailedError(FedAsyncError):
    """The trainer raised in `fit`/`evaluate` for several notices in a row."""

    reason = "trainer_failed"
