"""Trainers by name. A new framework = one module + one line in `TRAINERS`.

Entries are import paths, not classes, so naming `keras` costs nothing until it is
used (TensorFlow takes seconds to import and is an optional extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from client.trainers.base import Trainer, TrainResult

TRAINERS: dict[str, str] = {
    "keras": "client.trainers.keras_trainer:KerasTrainer",
    "numpy": "client.trainers.numpy_trainer:NumpyTrainer",
}
DEFAULT_TRAINER = "keras"


def get_trainer(name: str = DEFAULT_TRAINER, **options: Any) -> Trainer:
    """Build the trainer registered as `name` with its constructor `options`."""
    try:
        target = TRAINERS[name]
    except KeyError:
        raise ValueError(
            f"unknown trainer {name!r}; available: {', '.join(sorted(TRAINERS))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    trainer: Trainer = getattr(importlib.import_module(module_name), class_name)(**options)
    return trainer


__all__ = ["DEFAULT_TRAINER", "TRAINERS", "TrainResult", "Trainer", "get_trainer"]
