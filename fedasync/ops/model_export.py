"""`fedasync model export`: a task's initial weights from a `.keras` file or a torch state_dict.

The result is the safetensors file `fedasync task start --initial-weights` takes. Neither
TensorFlow nor torch is a dependency of fedasync: each is imported only when its format is
asked for, and a missing one is a clear error saying what to install.

- Keras: `keras.saving.load_model(path, compile=False, safe_mode=True)` (safe mode: no
  lambda layer's code is deserialised). Tensors are the model's float variables in order,
  trainable and not (BatchNorm's moving statistics included), named as the silo's Keras
  trainer names them (`client.trainers.keras_model.tensor_names`: the variable path
  without the model's own name, `dense/kernel`), so that the silos' updates match the
  task's model; integer variables (a seed generator's state) stay with each silo.
- torch: `torch.load(path, map_location="cpu", weights_only=True)` only, so a pickled
  module or any other object is refused by torch itself, never run. Tensors are the
  state_dict's keys in order. Integer buffers (BatchNorm's `num_batches_tracked`) are not
  model weights a federation can average: they are left out, and named in the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from fedasync.core.codec import ACCEPTED_DTYPES, Weights
from fedasync.core.errors import ConfigError, SchemaError

KERAS_SUFFIXES = (".keras",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Exported:
    weights: Weights
    source_format: str
    left_out: tuple[tuple[str, str], ...] = field(default=())  # (name, dtype) kept local


def format_of(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in ("keras", "torch"):
            raise ConfigError(f"--format {given!r}: expected keras or torch")
        return given
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    raise ConfigError(
        f"{str(path)!r}: cannot tell the format from {suffix or 'no suffix'!r}; "
        f"use .keras ({'/'.join(KERAS_SUFFIXES)}) or a torch state_dict "
        f"({'/'.join(TORCH_SUFFIXES)}), or say --format keras|torch"
    )


def export_model(path: Path, fmt: str | None = None) -> Exported:
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    kind = format_of(path, fmt)
    return from_keras(path) if kind == "keras" else from_torch(path)


def _need(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{what} needs {module}, which is not installed ({exc}); "
            f"install it, e.g. pip install 'fedasync[{extra}]'"
        ) from exc


def from_keras(path: Path) -> Exported:
    keras = _need("keras", "tf", f"reading the Keras model {str(path)!r}")
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; each is "this file is unusable"
        raise SchemaError(
            f"Keras model {str(path)!r} cannot be loaded: {type(exc).__name__}: {exc} "
            "(custom layers must be registered with keras.saving.register_keras_serializable)"
        ) from exc
    from client.trainers.keras_model import tensor_names  # the silo's names, exactly

    try:
        named = tensor_names(model)
    except ValueError as exc:
        raise SchemaError(f"Keras model {str(path)!r}: {exc}") from exc
    weights: Weights = {name: np.array(variable.numpy()) for name, variable in named}
    kept = {id(variable) for _, variable in named}
    left_out = tuple(
        (str(getattr(v, "path", v.name)), str(np.dtype(v.dtype)))
        for v in model.weights
        if id(v) not in kept
    )
    return _checked(weights, "keras", left_out, path)


def from_torch(path: Path) -> Exported:
    torch = _need("torch", "torch", f"reading the torch state_dict {str(path)!r}")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal, a corrupt zip, ...
        raise SchemaError(
            f"torch file {str(path)!r} is not a state_dict torch loads with weights_only=True "
            f"({type(exc).__name__}); "
            "save `model.state_dict()`, not the module"
        ) from exc
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise SchemaError(
            f"torch file {str(path)!r} holds a {type(state).__name__}, not a state_dict "
            "(a mapping of names to tensors)"
        )
    weights: Weights = {}
    left_out: list[tuple[str, str]] = []
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:  # numpy has none: the same 16 bits, as ml_dtypes'
            bits = tensor.detach().cpu().contiguous().view(torch.int16).numpy()
            weights[str(name)] = bits.view(ml_dtypes.bfloat16).copy()
            continue
        if not tensor.is_floating_point():
            left_out.append((str(name), str(tensor.dtype).removeprefix("torch.")))
            continue
        weights[str(name)] = tensor.detach().cpu().contiguous().numpy().copy()
    return _checked(weights, "torch", tuple(left_out), path)


def _checked(
    weights: Weights, fmt: str, left_out: tuple[tuple[str, str], ...], path: Path
) -> Exported:
    if not weights:
        raise SchemaError(f"{fmt} model {str(path)!r} has no floating-point tensors to export")
    for name, arr in weights.items():
        if str(arr.dtype) not in ACCEPTED_DTYPES:
            raise SchemaError(
                f"{fmt} tensor {name!r} of {str(path)!r} has dtype {arr.dtype}; accepted: "
                f"{', '.join(ACCEPTED_DTYPES)}"
            )
    return Exported(weights, fmt, left_out)
