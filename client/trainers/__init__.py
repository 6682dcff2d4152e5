"""Trainers by name, by import path, or from an installed plugin.

`--trainer` takes one of three spellings:
- a built-in name (`numpy`, `keras`): its class is built with the client's options;
- `package.module:factory`: a function (or class) the user wrote, called as
  `factory(spec, options)` (see `client.trainers.base`); the current directory is
  searched first, so `examples.keras_cnn:factory` works from a checkout's root;
- the name of an entry point in the group `fedasync.trainers` of an installed package
  (`[project.entry-points."fedasync.trainers"] hospital = "hospital.fl:factory"`).

Entries are import paths, not classes, so naming `keras` costs nothing until it is used
(TensorFlow takes seconds to import and is an optional extra). A factory is imported at
once (a path that does not import is an error before anything runs) but called only
when the task's model spec is known: see `client.trainers.plugin`.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from client.trainers.base import (
    Trainer,
    TrainerFactory,
    TrainerFailedError,
    TrainerSetupError,
    TrainResult,
)
from client.trainers.plugin import PluginTrainer

TRAINERS: dict[str, str] = {
    "keras": "client.trainers.keras_trainer:KerasTrainer",
    "numpy": "client.trainers.numpy_trainer:NumpyTrainer",
}
DEFAULT_TRAINER = "keras"
ENTRY_POINT_GROUP = "fedasync.trainers"


def get_trainer(name: str = DEFAULT_TRAINER, **options: Any) -> Trainer:
    """Build the trainer registered as `name` with its constructor `options`; a plugin
    (`module:factory` or an entry point) gets `options` as its options mapping."""
    if name in TRAINERS:
        module_name, _, class_name = TRAINERS[name].partition(":")
        trainer: Trainer = getattr(importlib.import_module(module_name), class_name)(**options)
        return trainer
    return PluginTrainer(name, load_factory(name), options)


def load_factory(name: str) -> TrainerFactory:
    """The factory `name` designates (`module:attr` or an entry point's name)."""
    if ":" in name:
        return _import_factory(name, name)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise TrainerSetupError(
            f"unknown trainer {name!r}; available: {', '.join(sorted({*TRAINERS, *installed}))}, "
            f"or package.module:factory"
        )
    return _import_factory(found[0].value, f"{name} (entry point {found[0].value!r})")


def _import_factory(path: str, what: str) -> TrainerFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise TrainerSetupError(f"--trainer {what!r}: expected package.module:factory")
    cwd = os.getcwd()
    if cwd not in sys.path:  # as `python -m` would: the user's own modules, from where they are
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TrainerSetupError(
            f"--trainer {what!r}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {exc}); searched {cwd!r} and the installed packages"
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise TrainerSetupError(
                f"--trainer {what!r}: module {module_name!r} ({module.__file__}) has no {attr!r}"
            )
    if not callable(factory):
        raise TrainerSetupError(f"--trainer {what!r}: {attr!r} is not callable")
    loaded: TrainerFactory = factory
    return loaded


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs (`--trainer-option`); values that read as JSON-ish numbers or
    booleans become them, anything else stays a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--trainer-option {pair!r}: expected KEY=VALUE")
        out[key.strip()] = _value(value)
    return out


def _value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def is_builtin(name: str) -> bool:
    return name in TRAINERS


__all__ = [
    "DEFAULT_TRAINER",
    "ENTRY_POINT_GROUP",
    "TRAINERS",
    "PluginTrainer",
    "TrainResult",
    "Trainer",
    "TrainerFactory",
    "TrainerFailedError",
    "TrainerSetupError",
    "get_trainer",
    "is_builtin",
    "load_factory",
    "parse_options",
]
