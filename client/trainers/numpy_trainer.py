"""Multinomial softmax regression with minibatch SGD, in plain numpy (no TensorFlow).

Small and exact enough for tests, the embedded demo and the Lambda-free paths. Its
tensors are named like the Keras trainer's default model (`dense/kernel`, `dense/bias`)
so either framework can continue from the other's global model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainResult
from fedasync.core.codec import Weights

KERNEL = "dense/kernel"
BIAS = "dense/bias"


class NumpyTrainer:
    """Softmax regression `p = softmax(x @ W + b)`, cross-entropy loss with L2 on W."""

    name = "numpy"

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        *,
        learning_rate: float = 1.0,
        batch_size: int = 16,
        l2: float = 1e-4,
    ) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.l2 = l2

    def init_weights(self, seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        # Glorot-uniform, as Keras initialises a Dense kernel
        limit = np.sqrt(6.0 / (self.num_features + self.num_classes))
        kernel = rng.uniform(-limit, limit, (self.num_features, self.num_classes))
        return {
            KERNEL: kernel.astype(np.float32),
            BIAS: np.zeros(self.num_classes, dtype=np.float32),
        }

    def fit(
        self,
        weights: Weights,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        seed: int,
    ) -> TrainResult:
        # float64 working copies: the update stays stable and the caller's arrays untouched
        kernel = weights[KERNEL].astype(np.float64)
        bias = weights[BIAS].astype(np.float64)
        rng = np.random.default_rng(seed)
        xs = np.asarray(x, dtype=np.float64)
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), self.batch_size):
                batch = order[start : start + self.batch_size]
                self._step(kernel, bias, xs[batch], y[batch])
        trained = {KERNEL: kernel.astype(np.float32), BIAS: bias.astype(np.float32)}
        metrics = self.evaluate(trained, x, y)
        return TrainResult(trained, len(y), {f"train_{k}": v for k, v in metrics.items()})

    def _step(
        self,
        kernel: npt.NDArray[np.float64],
        bias: npt.NDArray[np.float64],
        xb: npt.NDArray[np.float64],
        yb: npt.NDArray[np.int64],
    ) -> None:
        probs = _softmax(xb @ kernel + bias)
        probs[np.arange(len(yb)), yb] -= 1.0  # dLoss/dlogits = p - onehot(y)
        probs /= len(yb)
        kernel -= self.learning_rate * (xb.T @ probs + self.l2 * kernel)
        bias -= self.learning_rate * probs.sum(axis=0)

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        if len(y) == 0:
            return {"loss": 0.0, "accuracy": 0.0}
        logits = np.asarray(x, np.float64) @ weights[KERNEL].astype(np.float64)
        probs = _softmax(logits + weights[BIAS].astype(np.float64))
        picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
        return {
            "loss": float(-np.mean(np.log(picked))),
            "accuracy": float(np.mean(np.argmax(probs, axis=1) == y)),
        }


def _softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return out
