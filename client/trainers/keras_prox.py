"""FedProx for Keras models: a training loop whose loss carries the proximal term.

Li et al. 2020: the silo minimises `F_k(w) + mu/2 * ||w - w_center||^2`, `w_center` the
global model the round started from. Here the term is added **to the loss** inside the
train step (not added to the gradients; the two are the same update, since the term's
gradient is `mu * (w - w_center)`), over the model's trainable federated float variables:
non-trainable ones (BatchNorm statistics) take no gradient step, integer ones never
travel. The step is Keras's own `train_step` (TensorFlow backend) with that one addition:
forward pass, the compiled loss (`model.compute_loss`, regularisers included) plus the
term, the compiled optimizer's `apply_gradients`, the compiled metrics. The reported
`loss` is the compiled loss alone (F_k), so it compares with a run without FedProx.

Only used when mu > 0: with mu 0 the trainers call `model.fit` exactly as before. Array
data is shuffled per epoch by a seeded permutation (`model.fit`'s shuffle is TensorFlow's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from client.trainers.base import TrainerSetupError
from fedasync.core.codec import Weights


def fit_proximal(
    model: Any,
    batches: Iterable[Any] | None,
    named: list[tuple[str, Any]],
    *,
    mu: float,
    center: Weights,
    epochs: int,
    arrays: tuple[npt.NDArray[Any], npt.NDArray[Any], int, int] | None = None,
) -> dict[str, float]:
    """Train `model` for `epochs` on `batches` (a dataset of (x, y[, w]) batches) or on
    `arrays` (x, y, batch_size, seed); `named` are the (wire name, variable) pairs whose
    centre `center` holds. Returns the last epoch's metrics (Keras's names)."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise TrainerSetupError(
            f"FedProx with a Keras model needs the TensorFlow backend; this Keras runs "
            f"on {keras.backend.backend()!r}"
        )
    trainable = {id(var) for var in model.trainable_variables}
    pairs = [
        (var, tf.constant(center[name], dtype=var.dtype))
        for name, var in named
        if id(var) in trainable
    ]
    rng = np.random.default_rng(arrays[3]) if arrays is not None else None
    logs: dict[str, float] = {}
    for _ in range(epochs):
        model.reset_metrics()
        loss_sum, seen = 0.0, 0
        epoch = batches if arrays is None or rng is None else _array_batches(arrays, rng)
        for batch in epoch or ():
            x, y, weight = keras.utils.unpack_x_y_sample_weight(batch)
            loss, y_pred = _step(model, pairs, mu, (x, y, weight))
            n = int(tf.shape(tf.nest.flatten(x)[0])[0])
            loss_sum, seen = loss_sum + float(loss) * n, seen + n
            logs = {k: float(v) for k, v in model.compute_metrics(x, y, y_pred, weight).items()}
        logs["loss"] = loss_sum / seen if seen else 0.0
    return logs


def _step(
    model: Any, pairs: list[tuple[Any, Any]], mu: float, batch: tuple[Any, Any, Any]
) -> tuple[Any, Any]:
    """One optimizer step on the compiled loss + mu/2 * sum ||w - w_center||^2."""
    import tensorflow as tf

    x, y, weight = batch
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=weight, training=True)
        prox = tf.add_n([tf.reduce_sum(tf.square(var - anchor)) for var, anchor in pairs] or [0.0])
        total = model.optimizer.scale_loss(loss + (mu / 2.0) * prox)
    variables = model.trainable_variables
    model.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
    return loss, y_pred


def _array_batches(
    arrays: tuple[npt.NDArray[Any], npt.NDArray[Any], int, int], rng: np.random.Generator
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    x, y, batch_size, _ = arrays
    order = rng.permutation(len(y))
    for start in range(0, len(y), batch_size):
        batch = order[start : start + batch_size]
        yield x[batch], y[batch]
