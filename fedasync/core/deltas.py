"""Half-precision delta uploads for float32 models: the silo's encoding, the server's reading.

With the task's `update_encoding: {dtype: float16 | bfloat16}` a silo uploads
`half(local - global)` instead of its float32 model: half the bytes. The delta is taken in
float64 (exact for the difference of two float32 values within 2^29 of each other) and
rounded once to the half type, to nearest, ties to even (`to_half`). For a delta element
`d` in the half type's normal range the error is

    |d - half(d)| <= 2^-11 |d|   (float16, |d| >= 2^-14)
    |d - half(d)| <= 2^-8  |d|   (bfloat16, |d| >= 2^-126)

and below it (subnormals) the error is absolute: at most 2^-25 for float16 (a delta
under 2^-25, about 3e-8, becomes 0) and 2^-134 for bfloat16. So float16 keeps 11
significant bits of the *change*, where casting the weights themselves keeps 11 bits of
the weight. A delta beyond the half type's range (float16: 65504) is refused, nothing is
sent (`DeltaOverflowError`).

The object is safetensors as ever, its tensors in the half type, its metadata naming the
base version (`fedasync.delta_of`) and the dtype (`fedasync.delta_dtype`); the record
says `delta_dtype` too. The server reads it back as the local model
`float32(base + float32(half(d)))` (`local_from_delta`): everything downstream (FedAvg,
FedAsync, FedBuff, robust and DP aggregation, replay) sees a float32 model as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from fedasync.core import codec
from fedasync.core.codec import ORDER_KEY, Array, ModelSpec, TensorSpec, Weights
from fedasync.core.errors import ConfigError, FedAsyncError, IncompatibleUpdateError, SchemaError
from fedasync.core.stheader import loads_bounded, parse_layout

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig
    from fedasync.core.messages import UpdateRecord

DELTA_DTYPES: dict[str, np.dtype[Any]] = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
DELTA_OF_KEY = "fedasync.delta_of"
DELTA_DTYPE_KEY = "fedasync.delta_dtype"
CHUNK = 1 << 18  # elements rounded at a time: 2 MiB of float64


class DeltaOverflowError(FedAsyncError, ValueError):
    """A delta element lies beyond the half type's range: the silo sends nothing."""

    reason = "delta_overflow"


def _bf16_nearest(d64: Array) -> Array:
    """float64 -> bfloat16 rounded once: to float32 rounding to odd, then to nearest even
    (float32 keeps 16 more bits than bfloat16, so the two steps round as one)."""
    with np.errstate(over="ignore"):  # out of range: inf, which `make_delta` refuses
        f32 = d64.astype(np.float32)
    back = f32.astype(np.float64)
    inexact = back != d64
    # round to odd: where float32 rounded away from zero, one ulp back towards it (its
    # magnitude's bits minus one, whatever the sign); then the last bit set if inexact
    away = inexact & ((back > d64) ^ np.signbit(d64))
    bits = f32.view(np.uint32) - away.view(np.uint8)
    bits |= inexact.view(np.uint8)
    out: Array = bits.view(np.float32).astype(ml_dtypes.bfloat16)
    return out


def to_half(d64: Array, dtype: str) -> Array:
    """`d64` (float64) rounded once to `dtype`, to nearest, ties to even."""
    d64 = np.asarray(d64, dtype=np.float64)
    if dtype == "float16":
        with np.errstate(over="ignore"):  # out of range: inf, which `make_delta` refuses
            return d64.astype(np.float16)  # numpy rounds float64 -> float16 directly
    if dtype == "bfloat16":
        return _bf16_nearest(d64)
    raise SchemaError(f"delta dtype {dtype!r} is not one of {', '.join(DELTA_DTYPES)}")


def make_delta(
    local: Mapping[str, Array], base: Mapping[str, Array], dtype: str, who: str
) -> Weights:
    """half(local - base) per tensor, in the model's order, `CHUNK` elements at a time (no
    float64 copy of a model); `DeltaOverflowError` if an element of a finite delta leaves
    the half type's range."""
    out: Weights = {}
    for name, arr in local.items():
        flat, flat_base = np.ravel(arr), np.ravel(base[name])
        half = np.empty(flat.size, DELTA_DTYPES[dtype])
        for start in range(0, flat.size, CHUNK):
            stop = min(start + CHUNK, flat.size)
            d64 = np.subtract(flat[start:stop], flat_base[start:stop], dtype=np.float64)
            piece = to_half(d64, dtype)
            if not np.isfinite(piece).all():  # NaN passes (the server rejects it); inf not
                _refuse_overflow(d64, piece, dtype, f"{who}: tensor {name!r}")
            half[start:stop] = piece
        out[name] = half.reshape(np.shape(arr))
    return out


def _refuse_overflow(d64: Array, half: Array, dtype: str, who: str) -> None:
    over = np.isfinite(d64) & ~np.isfinite(half)
    if over.any():
        worst = float(np.max(np.abs(d64[over])))
        limit = float(np.finfo(DELTA_DTYPES[dtype]).max)
        raise DeltaOverflowError(
            f"{who} changed by {worst:.6g}, beyond {dtype}'s largest value {limit:.6g}; "
            f"the {dtype} delta cannot carry it and nothing was sent. Lower the learning "
            "rate or run the task without update_encoding"
        )


def write_delta_file(
    delta: Mapping[str, Array], path: str | os.PathLike[str], base_version: int, dtype: str
) -> str:
    """The delta as safetensors at `path`, marked a `dtype` delta of `base_version` (the
    tensor order kept as `codec` keeps it); its SHA-256, of the very bytes to be sent."""
    metadata = {
        ORDER_KEY: json.dumps(list(delta)),
        DELTA_OF_KEY: str(int(base_version)),
        DELTA_DTYPE_KEY: dtype,
    }
    contiguous = {n: a if a.flags.c_contiguous else a.copy(order="C") for n, a in delta.items()}
    save_file(contiguous, str(path), metadata=metadata)
    return codec.sha256_file(path)


def header_metadata(data: bytes, who: str) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes (already decoded once: the header is sound)."""
    header_len = int.from_bytes(data[:8], "little")
    meta, _ = parse_layout(data[8 : 8 + header_len], len(data) - 8 - header_len, who)
    return dict(meta or {})


def delta_spec(spec: ModelSpec, dtype: str) -> ModelSpec:
    """The spec a delta of a model of `spec` has: the same tensors in the half type."""
    return tuple(TensorSpec(t.name, t.shape, dtype) for t in spec)


def local_from_delta(
    data: bytes,
    decoded: Weights,
    record: UpdateRecord,
    *,
    spec: ModelSpec,
    cfg: TaskConfig,
    base: Mapping[str, Array] | None,
    who: str,
) -> Weights:
    """The local model an update's object stands for. A full model (no delta in its record
    nor its metadata) is itself; a delta must be the task's encoding, of the base version
    its record names, of the model's tensors in the half type and finite; it reads as
    float32(base + float32(delta)), `base` the global model of that version (None: a stale
    update, refused for that by the caller; its delta is returned, checked but unread).
    A mismatch is an `IncompatibleUpdateError` (reason `delta`)."""
    record_dtype, base_version = record.delta_dtype, record.base_version
    task_dtype = cfg.update_encoding.dtype if cfg.update_encoding is not None else None
    meta = header_metadata(data, who)
    marked = meta.get(DELTA_DTYPE_KEY)
    if record_dtype is None and marked is None:
        return decoded
    if record_dtype != marked or record_dtype is None:
        raise _bad(who, f"its record says delta_dtype {record_dtype!r}, its object {marked!r}")
    if task_dtype != record_dtype:
        raise _bad(
            who, f"it is a {record_dtype} delta; the task takes {task_dtype or 'full models'}"
        )
    of = loads_bounded(meta.get(DELTA_OF_KEY, "null"), 0, "delta base version", who)
    if type(of) is not int or of != base_version:
        raise _bad(
            who, f"it is a delta of version {of!r}; its record names base version {base_version}"
        )
    codec.check_compatible(decoded, delta_spec(spec, record_dtype), who)
    codec.check_finite(decoded, who)
    if base is None:
        return decoded
    return {
        t.name: np.asarray(base[t.name], np.float32) + decoded[t.name].astype(np.float32)
        for t in spec
    }


def _bad(who: str, why: str) -> IncompatibleUpdateError:
    return IncompatibleUpdateError(f"{who}: {why}", reason="delta")


def check_model_fits(cfg: TaskConfig, spec: ModelSpec, who: str) -> None:
    """Delta uploads are for float32 models (a half model's delta would gain nothing, a
    float64 one would lose what it keeps float64 for): `ConfigError` at task start."""
    if cfg.update_encoding is None:
        return
    other = [t for t in spec if t.dtype != "float32"]
    if other:
        raise ConfigError(
            f"{who}: update_encoding {cfg.update_encoding.dtype} is for float32 models; tensor "
            f"{other[0].name!r} is {other[0].dtype} (a half model's delta saves no bytes, a "
            "float64 model's would lose its precision): drop update_encoding",
            reason="update_encoding",
        )
