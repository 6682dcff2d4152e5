"""Does the silo's data fit the task's model? Asked before anything is trained.

A dataset of the wrong feature shape would train a model of the wrong shape (or crash
inside a framework), and the server would reject its update after the upload. The
client asks first, on the first global model it receives, and stops with one error
naming the data and the tensor: nothing is trained, uploaded or deleted (the notice
waits on the queue for a run with the right data).

A trainer may answer for itself with `check_data(weights, x, where)` (the torch trainer
runs one example through the module). Otherwise the model the trainer builds for this
data (`init_weights`) must have the global model's tensor shapes.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from client.data import Dataset
from client.trainers.base import Trainer
from fedasync.core import codec
from fedasync.core.codec import ModelSpec, Weights
from fedasync.core.errors import SchemaError

# a trainer's own spec, built once per trainer (building a Keras model takes a while)
_OWN_SPECS: weakref.WeakKeyDictionary[Any, ModelSpec] = weakref.WeakKeyDictionary()


def check_data_fits(trainer: Trainer, weights: Weights, data: Dataset, task_name: str) -> None:
    """Raise `SchemaError` (reason `feature_shape`) if `data` cannot train on `weights`."""
    where = f"{data.source} (examples of shape {data.feature_shape})"
    check = getattr(trainer, "check_data", None)
    if callable(check):
        try:
            check(weights, data.x, data.source)
        except SchemaError as exc:
            raise SchemaError(f"task {task_name!r}: {exc.message}", reason=exc.reason) from None
        return
    own = _own_spec(trainer)
    theirs = {t.name: t.shape for t in codec.spec_of(weights)}
    for tensor in own:
        expected = theirs.get(tensor.name)
        if expected is not None and expected != tensor.shape:
            raise SchemaError(
                f"{where} does not fit task {task_name!r}: the {trainer.name} trainer's "
                f"model for it has tensor {tensor.name!r} of shape {tensor.shape}; the "
                f"task's model has {expected}",
                reason="feature_shape",
            )


def _own_spec(trainer: Trainer) -> ModelSpec:
    try:
        return _OWN_SPECS[trainer]
    except (KeyError, TypeError):
        spec = codec.spec_of(trainer.init_weights(0))
    with contextlib.suppress(TypeError):  # not weak-referenceable: built again next time
        _OWN_SPECS[trainer] = spec
    return spec
