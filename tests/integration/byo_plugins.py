"""Trainer plugins the bring-your-own-model tests name as `--trainer module:factory`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from client.trainers.base import TrainResult
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core.codec import ModelSpec, Weights

calls: list[tuple[ModelSpec | None, dict[str, Any]]] = []  # what each factory call was given


def numpy_factory(spec: ModelSpec | None, options: Mapping[str, Any]) -> NumpyTrainer:
    calls.append((spec, dict(options)))
    return NumpyTrainer(int(options.get("num_features", 64)), int(options.get("num_classes", 10)))


def narrow_factory(spec: ModelSpec | None, options: Mapping[str, Any]) -> NumpyTrainer:
    """A model of 32 inputs, for a task whose model takes 64."""
    return NumpyTrainer(32, 10)


class BrokenFit(NumpyTrainer):
    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        raise RuntimeError("CUDA out of memory (simulated)")


def broken_factory(spec: ModelSpec | None, options: Mapping[str, Any]) -> BrokenFit:
    return BrokenFit()
