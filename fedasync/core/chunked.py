"""Updates read by flat chunks: the N updates' slices of one chunk of one tensor stacked
into one reused float64 buffer (N x chunk), so that a reduction over N updates needs
memory for N x chunk values, not N x model. Inputs may be np.memmap-backed.

Shared by `fedasync.core.robust` (which documents the memory of each aggregator) and
`fedasync.core.optimizers` (the same checks of names, shapes and dtypes).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fedasync.core.codec import Array, ModelSpec, Weights, spec_of
from fedasync.core.errors import InvalidWeightsError, SchemaError

CHUNK_ELEMENTS = 1 << 18

Updates = Sequence[Mapping[str, Array]]


def is_float(dtype: np.dtype[Any]) -> bool:
    # bfloat16 (ml_dtypes) is not an np.floating subtype, yet casts to and from float64
    return bool(np.issubdtype(dtype, np.floating)) or dtype.name == "bfloat16"


def check_updates(updates: Updates, what: str, labels: Sequence[str] | None = None) -> ModelSpec:
    """The common spec of `updates` (the first one's order); SchemaError naming the first
    update that differs (`labels[i]`, else "update i"), the tensor and what was expected."""
    if len(updates) == 0:
        raise SchemaError(f"{what}: no updates to aggregate (empty list)")
    label = list(labels) if labels is not None else [f"update {i}" for i in range(len(updates))]
    spec = spec_of(updates[0])
    if not spec:
        raise SchemaError(f"{what}: {label[0]} has no tensors")
    names = sorted(t.name for t in spec)
    for i, update in enumerate(updates):
        if sorted(update) != names:
            missing = sorted(set(names) - set(update))
            extra = sorted(set(update) - set(names))
            raise SchemaError(
                f"{what}: {label[i]} has other tensors than {label[0]}: "
                f"missing {missing}, unexpected {extra}"
            )
        for t in spec:
            arr = update[t.name]
            if not isinstance(arr, np.ndarray):
                raise SchemaError(f"{what}: {label[i]} tensor {t.name!r} is not an array")
            if tuple(arr.shape) != t.shape or str(arr.dtype) != t.dtype:
                raise SchemaError(
                    f"{what}: {label[i]} has tensor {t.name!r} of shape {tuple(arr.shape)} "
                    f"and dtype {arr.dtype}; {label[0]} has shape {t.shape} and dtype {t.dtype}"
                )
            if not is_float(arr.dtype):
                raise SchemaError(f"{what}: tensor {t.name!r} has dtype {arr.dtype}, not a float")
    return spec


def integer(value: object, label: str, what: str) -> int:
    """An int (numpy integers too), never a bool."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise SchemaError(f"{what}: {label} must be an integer, got {value!r}") from None


def check_chunk(chunk: int) -> None:
    if integer(chunk, "chunk", "robust aggregation") < 1:
        raise SchemaError(f"chunk must be a positive number of elements, got {chunk!r}")


def flat_view(arr: Array) -> Array | None:
    # a view for a C-contiguous tensor (memmaps of safetensors files are); None: read by .flat
    return arr.reshape(-1) if arr.flags.c_contiguous else None


def blocks(
    updates: Updates, spec: ModelSpec, chunk: int, what: str
) -> Iterator[tuple[str, int, int, Array]]:
    """(tensor name, start, stop, N x (stop - start) float64 block) over every tensor chunk.

    The block is one reused buffer: a consumer must be done with it before the next one.
    Non-finite values are refused here, where each value is read anyway."""
    largest = max(math.prod(t.shape) for t in spec)
    buffer = np.empty((len(updates), max(1, min(chunk, largest))), dtype=np.float64)
    for t in spec:
        size = math.prod(t.shape)
        tensors = [u[t.name] for u in updates]
        flats = [flat_view(a) for a in tensors]
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            block = buffer[:, : stop - start]
            for i, (arr, flat) in enumerate(zip(tensors, flats, strict=True)):
                block[i] = flat[start:stop] if flat is not None else arr.flat[start:stop]
            if not np.isfinite(block).all():
                bad = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise InvalidWeightsError(
                    f"{what}: update {bad} has NaN/Inf in tensor {t.name!r}", reason="non_finite"
                )
            yield t.name, start, stop, block


def empty_like(first: Mapping[str, Array], spec: ModelSpec) -> Weights:
    return {t.name: np.empty(t.shape, dtype=first[t.name].dtype) for t in spec}
