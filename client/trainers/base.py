"""The one interface every trainer implements: weights in, weights + count + metrics out.

The client loop only ever calls these three methods (from a worker thread), so a new
framework is one module implementing them plus one line in `client.trainers.TRAINERS`.
Weights are ordered `{name: ndarray}` mappings, the same the codec writes as safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedasync.core.codec import Weights


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
