"""Multinomial softmax regression with minibatch SGD, in plain numpy (no TensorFlow).

Small and exact enough for tests, the embedded demo and the Lambda-free paths. Its
tensors are named like the Keras trainer's default model (`dense/kernel`, `dense/bias`)
so either framework can continue from the other's global model.

With `loss="mse"` it is linear regression instead, `y_hat = x @ W + b` with `num_classes`
outputs (1 for a scalar target), trained on the mean squared error; it then reports
`loss` (the MSE) and `mae`, and no accuracy. Inputs of any shape (n, ...) are flattened.

FedProx (`proximal_mu` > 0): each minibatch step also descends the proximal term
`mu/2 * ||w - w_center||^2` on the kernel and the bias, i.e. adds its gradient
`mu * (w - w_center)`, taken at the same point as the loss's gradient. With mu 0 the
step is exactly the plain one (the same operations, the same bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainResult
from fedasync.core.codec import Weights

KERNEL = "dense/kernel"
BIAS = "dense/bias"
LOSSES = ("cross_entropy", "mse")
# a full step on the MSE of [0, 1] features diverges once lr exceeds 2 / the largest
# eigenvalue of x'x / n (about 13 for digits' 64 pixels): regression starts lower
DEFAULT_LR = {"cross_entropy": 1.0, "mse": 0.05}


class NumpyTrainer:
    """Softmax regression `p = softmax(x @ W + b)`, cross-entropy loss with L2 on W
    (or, `loss="mse"`, linear regression on the squared error with the same L2)."""

    name = "numpy"

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        *,
        learning_rate: float | None = None,
        batch_size: int = 16,
        l2: float = 1e-4,
        loss: str = "cross_entropy",
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.loss = loss
        self.learning_rate = DEFAULT_LR[loss] if learning_rate is None else learning_rate
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
        proximal_mu: float = 0.0,
        proximal_center: Weights | None = None,
    ) -> TrainResult:
        # float64 working copies: the update stays stable and the caller's arrays untouched
        kernel = weights[KERNEL].astype(np.float64)
        bias = weights[BIAS].astype(np.float64)
        center = weights if proximal_center is None else proximal_center
        anchor = _Anchor(center, proximal_mu) if proximal_mu else None
        rng = np.random.default_rng(seed)
        xs = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        step = self._step if self.loss == "cross_entropy" else self._mse_step
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), self.batch_size):
                batch = order[start : start + self.batch_size]
                pull = anchor.pull(kernel, bias) if anchor else None
                step(kernel, bias, xs[batch], y[batch])
                if pull is not None:  # the proximal gradient at the step's starting point
                    kernel -= self.learning_rate * pull[0]
                    bias -= self.learning_rate * pull[1]
        # back in the global's dtype (float32, or bf16/fp16 for a half-precision model)
        trained = {
            KERNEL: kernel.astype(weights[KERNEL].dtype),
            BIAS: bias.astype(weights[BIAS].dtype),
        }
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

    def _mse_step(
        self,
        kernel: npt.NDArray[np.float64],
        bias: npt.NDArray[np.float64],
        xb: npt.NDArray[np.float64],
        yb: npt.NDArray[Any],
    ) -> None:
        residual = xb @ kernel + bias - _targets(yb, kernel.shape[1])
        grad = 2.0 * residual / len(yb)  # dLoss/dy_hat of the mean over examples
        kernel -= self.learning_rate * (xb.T @ grad + self.l2 * kernel)
        bias -= self.learning_rate * grad.sum(axis=0)

    def evaluate(
        self, weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> dict[str, float]:
        if self.loss == "mse":
            return self._evaluate_mse(weights, x, y)
        if len(y) == 0:
            return {"loss": 0.0, "accuracy": 0.0}
        logits = np.asarray(x, np.float64).reshape(len(x), -1) @ weights[KERNEL].astype(np.float64)
        probs = _softmax(logits + weights[BIAS].astype(np.float64))
        picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
        return {
            "loss": float(-np.mean(np.log(picked))),
            "accuracy": float(np.mean(np.argmax(probs, axis=1) == y)),
        }

    def _evaluate_mse(
        self, weights: Weights, x: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> dict[str, float]:
        if len(y) == 0:
            return {"loss": 0.0, "mae": 0.0}
        kernel = weights[KERNEL].astype(np.float64)
        pred = np.asarray(x, np.float64).reshape(len(x), -1) @ kernel
        residual = pred + weights[BIAS].astype(np.float64) - _targets(y, kernel.shape[1])
        # per example, summed over outputs, then the mean over examples
        return {
            "loss": float(np.mean(np.sum(residual**2, axis=1))),
            "mae": float(np.mean(np.sum(np.abs(residual), axis=1))),
        }


class _Anchor:
    """FedProx's centre (the round's global model) in float64, and its weight mu."""

    def __init__(self, center: Weights, mu: float) -> None:
        self.kernel = center[KERNEL].astype(np.float64)
        self.bias = center[BIAS].astype(np.float64)
        self.mu = mu

    def pull(
        self, kernel: npt.NDArray[np.float64], bias: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The gradient of mu/2 * ||w - center||^2 at (kernel, bias): mu * (w - center)."""
        return self.mu * (kernel - self.kernel), self.mu * (bias - self.bias)


def _targets(y: npt.NDArray[Any], outputs: int) -> npt.NDArray[np.float64]:
    return np.asarray(y, np.float64).reshape(len(y), outputs)


def _softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return out
