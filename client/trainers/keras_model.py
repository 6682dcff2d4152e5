"""Any compiled Keras model behind the `Trainer` interface: functional, sequential or
subclassed, trained on the client's arrays or on the user's own `tf.data.Dataset`.

Tensors are named by variable path, without the model's own name (`conv/kernel`,
`dense/bias`), so the same code builds the same names in every silo and at the operator.
Keras numbers unnamed layers per process (`dense_3`): name your layers. Float variables
(trainable or not: BatchNorm statistics too) go on the wire; integer ones (seed
generator states, counters) and the optimizer's state stay local.

TensorFlow is only imported by whoever builds the model (the user's factory): this
module does not import it, and `fedasync` never does.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainResult
from client.trainers.keras_prox import fit_proximal
from fedasync.core.codec import Weights


class KerasModelTrainer:
    """Wraps a compiled `keras.Model`. `data`/`eval_data`: a `tf.data.Dataset` of
    batches to train/score on instead of the client's arrays (its examples are counted
    once, for the FedAvg weight). Flat features are reshaped to the model's input shape
    when their sizes agree (the 8x8 digits, shipped flat, feed a Conv2D as (8, 8, 1))."""

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 32,
        data: Any = None,
        eval_data: Any = None,
        name: str = "keras-model",
    ) -> None:
        if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
            raise ValueError(f"model {getattr(model, 'name', model)!r} is not compiled")
        self.model = model
        self.batch_size = batch_size
        self.data = data
        self.eval_data = eval_data
        self.name = name
        self._examples: int | None = None
        self._lock = threading.Lock()  # one model; the client calls from one thread, others may too

    def init_weights(self, seed: int) -> Weights:
        """The model as the factory built it (seed it there: `keras.utils.set_random_seed`)."""
        with self._lock:
            return get_weights(self.model)

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
        """FedProx (mu > 0): the proximal term is added to the loss in the train step
        (`client.trainers.keras_prox`) over the trainable federated variables; mu 0 is
        `model.fit` as ever."""
        import keras  # the user's factory has imported it already

        with self._lock:
            keras.utils.set_random_seed(seed)
            set_weights(self.model, weights)
            if proximal_mu:
                return self._fit_proximal(
                    weights, x, y, epochs=epochs, seed=seed, mu=proximal_mu, center=proximal_center
                )
            if self.data is not None:
                history = self.model.fit(self.data, epochs=epochs, shuffle=False, verbose=0)
                count = self._count_examples()
            else:
                inputs = model_input(self.model, x)
                history = self.model.fit(
                    inputs, y, epochs=epochs, batch_size=self.batch_size, shuffle=True, verbose=0
                )
                count = len(y)
            metrics = {f"train_{k}": float(v[-1]) for k, v in history.history.items()}
            return TrainResult(get_weights(self.model), count, metrics)

    def _fit_proximal(
        self,
        weights: Weights,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        epochs: int,
        seed: int,
        mu: float,
        center: Weights | None,
    ) -> TrainResult:
        arrays = (
            None
            if self.data is not None
            else (model_input(self.model, x), y, self.batch_size, seed)
        )
        last = fit_proximal(
            self.model,
            self.data,
            tensor_names(self.model),
            mu=mu,
            center=weights if center is None else center,
            epochs=epochs,
            arrays=arrays,
        )
        count = self._count_examples() if self.data is not None else len(y)
        return TrainResult(
            get_weights(self.model), count, {f"train_{k}": v for k, v in last.items()}
        )

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        with self._lock:
            set_weights(self.model, weights)
            if self.eval_data is not None:
                scores = self.model.evaluate(self.eval_data, verbose=0, return_dict=True)
            else:
                scores = self.model.evaluate(
                    model_input(self.model, x), y, batch_size=256, verbose=0, return_dict=True
                )
            return {k: float(v) for k, v in scores.items()}

    def _count_examples(self) -> int:
        if self._examples is None:
            self._examples = sum(int(_batch_len(batch)) for batch in self.data)
        return self._examples


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, tuple | list) else batch
    while isinstance(first, dict | tuple | list):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    return int(first.shape[0])


def tensor_names(model: Any) -> list[tuple[str, Any]]:
    """(stable name, variable) for every float variable, in the model's order."""
    prefix = f"{model.name}/"
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for var in model.weights:
        if np.dtype(var.dtype).kind != "f":
            continue
        path = str(getattr(var, "path", var.name))
        name = path.removeprefix(prefix)
        if name in seen:
            raise ValueError(
                f"model {model.name!r} has two variables named {name!r}; give its layers "
                "distinct names"
            )
        seen.add(name)
        out.append((name, var))
    return out


def get_weights(model: Any) -> Weights:
    return {name: np.array(var.numpy()) for name, var in tensor_names(model)}


def set_weights(model: Any, weights: Weights) -> None:
    for name, var in tensor_names(model):
        if name not in weights:
            raise KeyError(f"model tensor {name!r} is missing from the weights given")
        var.assign(weights[name])


def model_input(model: Any, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """`x` shaped as the model's single input, when only the shape differs."""
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or not shape or isinstance(shape[0], tuple):
        return x
    dims = shape[1:]
    if any(d is None for d in dims) or tuple(x.shape[1:]) == tuple(dims):
        return x
    if math.prod(x.shape[1:]) != math.prod(dims):
        raise ValueError(
            f"data has examples of shape {tuple(x.shape[1:])}; model {model.name!r} takes "
            f"{tuple(dims)}"
        )
    return x.reshape((len(x), *dims))
