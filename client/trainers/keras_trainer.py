"""A small Keras Dense classifier behind the `Trainer` interface (TensorFlow, lazily).

TensorFlow is imported on first use, never at module import, so `fedasync` and the
numpy paths never pay for it. Tensors are named `{layer}/{variable}`; with no hidden
layers the model is `dense/kernel`, `dense/bias`, exactly the numpy trainer's.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainResult
from client.trainers.keras_prox import fit_proximal
from fedasync.core.codec import Weights


def _keras() -> Any:
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the keras trainer needs TensorFlow: pip install 'fedasync[tf]' "
            "(or use --trainer numpy)"
        ) from exc
    return keras


class KerasTrainer:
    """Dense layers (`hidden_units`, relu) then a softmax `dense` layer, trained with SGD."""

    name = "keras"

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        *,
        hidden_units: tuple[int, ...] = (),
        learning_rate: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.hidden_units = hidden_units
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self._model: Any = None
        # One Keras model per trainer; fit/evaluate run in worker threads, so serialise them.
        self._lock = threading.Lock()

    def _build(self, seed: int) -> Any:
        keras = _keras()
        keras.utils.set_random_seed(seed)
        layers: list[Any] = [keras.Input(shape=(self.num_features,))]
        layers += [
            keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
            for i, units in enumerate(self.hidden_units)
        ]
        layers.append(keras.layers.Dense(self.num_classes, activation="softmax", name="dense"))
        model = keras.Sequential(layers)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def _model_for(self, seed: int) -> Any:
        if self._model is None:
            self._model = self._build(seed)
        return self._model

    def init_weights(self, seed: int) -> Weights:
        with self._lock:
            return _get_weights(self._build(seed))

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
        (`client.trainers.keras_prox`); mu 0 is `model.fit` as ever."""
        with self._lock:
            model = self._model_for(seed)
            _keras().utils.set_random_seed(seed)
            _set_weights(model, weights)
            if proximal_mu:
                center = weights if proximal_center is None else proximal_center
                named = [(f"{la.name}/{v.name}", v) for la in model.layers for v in la.weights]
                last = fit_proximal(
                    model, None, named, mu=proximal_mu, center=center, epochs=epochs,
                    arrays=(x, y, self.batch_size, seed),
                )  # fmt: skip
                metrics = {f"train_{k}": v for k, v in last.items()}
                return TrainResult(_get_weights(model), len(y), metrics)
            history = model.fit(
                x, y, epochs=epochs, batch_size=self.batch_size, shuffle=True, verbose=0
            )
            metrics = {f"train_{k}": float(v[-1]) for k, v in history.history.items()}
            return TrainResult(_get_weights(model), len(y), metrics)

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        with self._lock:
            model = self._model_for(0)
            _set_weights(model, weights)
            scores = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
            return {k: float(v) for k, v in scores.items()}


def _get_weights(model: Any) -> Weights:
    return {
        f"{layer.name}/{var.name}": np.array(var.numpy(), dtype=np.float32)
        for layer in model.layers
        for var in layer.weights
    }


def _set_weights(model: Any, weights: Weights) -> None:
    for layer in model.layers:
        for var in layer.weights:
            name = f"{layer.name}/{var.name}"
            if name not in weights:
                raise KeyError(f"model tensor {name!r} is missing from the weights given")
            var.assign(weights[name])
