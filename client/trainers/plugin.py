"""A user's trainer factory, called once the task's model spec is known.

The silo learns the task's model from the first global model it is sent (a silo may not
read the server's TASK item), so the factory is called on the first `fit`/`evaluate`,
with that model's spec. The model it builds is checked against the spec there and then:
a model that is not the task's stops the run with a `TrainerSetupError` naming the
first tensor that differs, before anything is trained or uploaded. FedProx's keywords
(`client.trainers.base`) are passed on when the task asks for them and the user's
trainer takes them; otherwise that task is refused, the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import (
    Trainer,
    TrainerFactory,
    TrainerSetupError,
    TrainResult,
    accepts_proximal,
    proximal_unsupported,
)
from fedasync.core.codec import ModelSpec, Weights, check_compatible, spec_of
from fedasync.core.errors import IncompatibleUpdateError


class PluginTrainer:
    """A `Trainer` that builds the user's trainer from its factory on first use."""

    def __init__(self, name: str, factory: TrainerFactory, options: Mapping[str, Any]) -> None:
        self.name = name
        self._factory = factory
        self._options = dict(options)
        self._inner: Trainer | None = None
        self._spec: ModelSpec | None = None
        self._lock = threading.Lock()

    def build(self, spec: ModelSpec | None) -> Trainer:
        """Call the factory; any error it raises is the user's setup, said as such."""
        try:
            trainer = self._factory(spec, dict(self._options))
        except TrainerSetupError:
            raise
        except Exception as exc:
            raise TrainerSetupError(
                f"--trainer {self.name!r}: the factory raised {type(exc).__name__}: {exc}"
            ) from exc
        missing = [m for m in ("init_weights", "fit", "evaluate") if not hasattr(trainer, m)]
        if missing:
            raise TrainerSetupError(
                f"--trainer {self.name!r}: the factory returned {type(trainer).__name__}, "
                f"not a Trainer (it lacks {', '.join(missing)})"
            )
        return trainer

    def bound(self, weights: Weights) -> Trainer:
        """The trainer for the task whose model `weights` is (built on first call)."""
        spec = spec_of(weights)
        with self._lock:
            if self._inner is None:
                inner = self.build(spec)
                check_model(inner.init_weights(0), spec, self.name)
                self._inner, self._spec = inner, spec
            elif spec != self._spec:
                check_model(weights, self._spec or (), self.name, who="the task's new model")
            return self._inner

    def init_weights(self, seed: int) -> Weights:
        """A task's initial model: the factory is told no spec (there is none yet)."""
        with self._lock:
            return self.build(None).init_weights(seed)

    def fit(
        self,
        weights: Weights,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        seed: int,
        proximal_mu: float = 0.0,
        proximal_center: Weights | None = None,
    ) -> TrainResult:
        """FedProx keywords reach the user's trainer only when mu > 0; a trainer that
        cannot take them refuses the task then (`TrainerSetupError`), never ignores mu."""
        inner = self.bound(weights)
        if not proximal_mu:
            return inner.fit(weights, x, y, epochs=epochs, seed=seed)
        if not accepts_proximal(inner):
            raise proximal_unsupported(inner, proximal_mu, f"--trainer {self.name!r}: the task")
        fit: Any = inner.fit  # the keywords are the optional capability, not the Protocol's
        result: TrainResult = fit(
            weights,
            x,
            y,
            epochs=epochs,
            seed=seed,
            proximal_mu=proximal_mu,
            proximal_center=proximal_center,
        )
        return result

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        return self.bound(weights).evaluate(weights, x, y)


def check_model(weights: Weights, spec: ModelSpec, name: str, who: str | None = None) -> None:
    """`weights` (the model the user's trainer builds) must be the task's model `spec`."""
    try:
        check_compatible(weights, spec, who or f"the model of --trainer {name!r}")
    except IncompatibleUpdateError as exc:
        raise TrainerSetupError(
            f"{exc.message}; the model must match the task's (tensor names come from "
            "the variable paths: name your layers)",
            reason=exc.reason,
        ) from exc
