"""The one interface every trainer implements: weights in, weights + count + metrics out.

The client loop only ever calls these three methods (from a worker thread), so a new
framework is one module implementing them. Weights are ordered `{name: ndarray}`
mappings, the same the codec writes as safetensors.

A trainer can also come from the user, as a *factory*: `factory(spec, options) -> Trainer`
(see `client.trainers`). `spec` is the task's model (tensor names, shapes, dtypes, from
the global model the silo received), or None when the factory is asked for a task's
initial model; `options` are the client's (`num_features`, `num_classes`, `seed`) and the
user's own (`--trainer-option KEY=VALUE`).

FedProx (Li et al. 2020) is an optional capability: a trainer whose `fit` takes the
keywords `proximal_mu: float = 0.0` and `proximal_center: Weights | None = None` minimises
`F_k(w) + proximal_mu/2 * ||w - proximal_center||^2` over its federated float tensors
(`proximal_center` None: the `weights` the fit starts from). The client calls `fit` once
per epoch, so it passes the notice's global model as `proximal_center` every time; it
passes neither keyword when the task's `proximal_mu` is 0, so a trainer without them
serves every task that does not ask for FedProx. One that asks for it (mu > 0) of a
trainer without them is refused (`TrainerSetupError`, reason `proximal_unsupported`):
ignoring the term silently would train a different algorithm than the task's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import structlog

from fedasync.core.codec import ModelSpec, Weights
from fedasync.core.errors import FedAsyncError

log = structlog.get_logger()


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


PROXIMAL_KEYWORDS = ("proximal_mu", "proximal_center")


def accepts_proximal(trainer: Any) -> bool:
    """Whether `trainer.fit` takes both FedProx keywords, by name (a `**kwargs` that
    might swallow them unread does not count)."""
    try:
        params = inspect.signature(trainer.fit).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return all(
        name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY
        for name in PROXIMAL_KEYWORDS
    )


def proximal_keywords(trainer: Any, mu: float, center: Weights, task_name: str) -> dict[str, Any]:
    """The keywords a `fit` gets for a task with FedProx weight `mu`: none when mu is 0
    (today's call, byte for byte); refused when the trainer cannot apply the term."""
    if not mu:
        return {}
    if not accepts_proximal(trainer):
        raise proximal_unsupported(trainer, mu, f"task {task_name!r}")
    return {"proximal_mu": float(mu), "proximal_center": center}


def proximal_unsupported(trainer: Any, mu: float, who: str) -> TrainerSetupError:
    """The refusal (logged) of a FedProx task by a trainer without the keywords."""
    name = getattr(trainer, "name", None) or type(trainer).__name__
    log.error("client.proximal_unsupported", reason="proximal_unsupported", mu=mu, trainer=name)
    return TrainerSetupError(
        f"{who} asks for FedProx (proximal_mu={mu}); trainer {name!r} "
        f"({type(trainer).__name__}) cannot apply the proximal term: its fit takes no "
        "proximal_mu and proximal_center keywords. Nothing was trained or uploaded: use a "
        "trainer that supports it (numpy, keras, KerasModelTrainer, TorchTrainer) or add "
        "the keywords to yours",
        reason="proximal_unsupported",
    )
