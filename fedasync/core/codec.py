"""Weights codec: ordered named float tensors <-> safetensors, and their validation.

safetensors is the only format read or written: a JSON header with names, dtypes and
shapes, then raw little-endian data; loading never executes code. Anything else (a
pickle, a `.npy`, a truncated or lying header) is refused with a `SchemaError` before a
byte of it is interpreted as tensors. Tensor order is kept in the header metadata so a
model round-trips with its layers in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file as _st_save_file

from fedasync.core.errors import (
    IncompatibleUpdateError,
    InvalidWeightsError,
    PayloadTooLargeError,
    SchemaError,
)
from fedasync.core.stheader import ORDER_MAX_DEPTH, loads_bounded, parse_layout, write_header

Array = npt.NDArray[Any]
Weights = dict[str, Array]

ACCEPTED_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32", "float64")
# safetensors dtype -> numpy (safetensors data is little-endian; bfloat16 from ml_dtypes)
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_SAFETENSORS_NAMES = {str(d): name for name, d in NUMPY_DTYPES.items()}
_DTYPE_RANK = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
ORDER_KEY = "fedasync.order"
MAX_HEADER_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


ModelSpec = tuple[TensorSpec, ...]


def spec_of(weights: Mapping[str, Array]) -> ModelSpec:
    return tuple(
        TensorSpec(n, tuple(int(d) for d in a.shape), str(a.dtype)) for n, a in weights.items()
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_dtypes(weights: Mapping[str, Array], who: str) -> None:
    if not weights:
        raise SchemaError(f"{who} has no tensors")
    for name, arr in weights.items():
        if not isinstance(arr, np.ndarray):
            raise SchemaError(f"{who}: tensor {name!r} is {type(arr).__name__}, not an array")
        if str(arr.dtype) not in ACCEPTED_DTYPES:
            raise IncompatibleUpdateError(
                f"{who}: tensor {name!r} has dtype {arr.dtype}; accepted: {', '.join(ACCEPTED_DTYPES)}",
                reason="dtype",
            )


def _contiguous(weights: Mapping[str, Array]) -> Weights:
    # not np.ascontiguousarray: it turns 0-d scalars into shape (1,)
    return {n: a if a.flags.c_contiguous else a.copy(order="C") for n, a in weights.items()}


def _metadata(weights: Mapping[str, Array]) -> dict[str, str]:
    return {ORDER_KEY: json.dumps(list(weights))}


def encode(weights: Mapping[str, Array], who: str = "model") -> bytes:
    """Serialise to safetensors bytes (deterministic: same tensors, same bytes).

    The bytes are the safetensors library's own, byte for byte (its header layout, tested
    against it), but joined straight from the arrays' buffers: one copy of the model,
    where the library holds its own buffer and a `bytes` copy of it at once."""
    _check_dtypes(weights, who)
    contiguous = _contiguous(weights)
    # the library's order: by dtype, widest first, then by name
    names = sorted(contiguous, key=lambda n: (-_DTYPE_RANK[str(contiguous[n].dtype)], n))
    arrays = [(n, contiguous[n]) for n in names]
    layout = [(n, _SAFETENSORS_NAMES[str(a.dtype)], a.shape, a.nbytes) for n, a in arrays]
    raw = [a.reshape(-1).view(np.uint8).data for _, a in arrays]
    return b"".join([write_header(layout, _metadata(weights)), *raw])


def write_file(
    weights: Mapping[str, Array], path: str | os.PathLike[str], who: str = "model"
) -> str:
    """Write safetensors straight to a file; returns its SHA-256."""
    _check_dtypes(weights, who)
    contiguous = _contiguous(weights)
    _st_save_file(contiguous, str(path), metadata=_metadata(weights))
    return sha256_file(path)


def sniff(head: bytes, total: int, who: str) -> None:
    """Refuse what is not safetensors, saying what it looks like, before parsing anything."""
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise SchemaError(
            f"{who} is a pickle payload; refused without loading it (expected safetensors)"
        )
    if head[:6] == b"\x93NUMPY":
        raise SchemaError(f"{who} is a .npy payload; refused (expected safetensors)")
    if head[:2] == b"PK":
        raise SchemaError(f"{who} is a zip/.npz/.keras archive; refused (expected safetensors)")
    if total < 10 or len(head) < 9:
        raise SchemaError(f"{who} is truncated: {total} bytes cannot hold a safetensors header")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER_BYTES or header_len > total - 8:
        raise SchemaError(
            f"{who} has a header that claims {header_len} bytes but the payload has {total - 8}; "
            "truncated or not safetensors"
        )
    if head[8:9] != b"{":
        raise SchemaError(f"{who} is not safetensors (no JSON header)")


def _ordered(tensors: Mapping[str, Array], metadata: Mapping[str, str] | None, who: str) -> Weights:
    order: list[str] | None = None
    if metadata and ORDER_KEY in metadata:
        loaded = loads_bounded(metadata[ORDER_KEY], ORDER_MAX_DEPTH, "tensor order metadata", who)
        if isinstance(loaded, list) and sorted(map(str, loaded)) == sorted(tensors):
            order = [str(n) for n in loaded]
    names = order if order is not None else sorted(tensors)
    out = {name: tensors[name] for name in names}
    _check_dtypes(out, who)
    return out


def decode(
    data: bytes, *, max_bytes: int | None = None, who: str = "model", copy: bool = True
) -> Weights:
    """Parse safetensors bytes into ordered arrays; hostile input -> SchemaError.

    `copy=True` gives writable arrays the caller owns (one copy of the data).
    `copy=False` gives read-only views on `data` itself (no copy at all): for a caller
    that only reads them, such as the aggregation fold; they keep `data` alive."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLargeError(f"{who} is {len(data)} bytes; the limit is {max_bytes}")
    return _decode_buffer(data, len(data), who, copy)


def read_file(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, who: str = "model"
) -> Weights:
    """Read a safetensors file through a memory map, copying out one tensor at a time."""
    total = Path(path).stat().st_size
    if max_bytes is not None and total > max_bytes:
        raise PayloadTooLargeError(f"{who} is {total} bytes; the limit is {max_bytes}")
    with open(path, "rb") as fh:
        if total < 10:  # mmap refuses an empty file; sniff names what is wrong
            sniff(fh.read(9), total, who)
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise SchemaError(f"{who} could not be read: {exc}") from exc
        with mapped:
            weights = _decode_buffer(mapped, total, who, copy=True)
    return weights


def _decode_buffer(buf: bytes | mmap.mmap, total: int, who: str, copy: bool) -> Weights:
    """Our own header check, then each tensor viewed (or copied) at its checked offsets."""
    head = bytes(buf[:9])
    sniff(head, total, who)
    (header_len,) = struct.unpack("<Q", head[:8])
    base = 8 + header_len
    metadata, entries = parse_layout(bytes(buf[8:base]), total - base, who)
    tensors: Weights = {}
    for e in entries:
        dtype = NUMPY_DTYPES[e.dtype]
        count = math.prod(e.shape)
        if count == 0:  # frombuffer refuses an offset at the very end of the buffer
            view = np.empty(e.shape, dtype=dtype)
        else:
            view = np.frombuffer(buf, dtype=dtype, count=count, offset=base + e.begin)
            view = view.reshape(e.shape)
        if copy:
            view = view.copy()
        else:
            view.flags.writeable = False
        tensors[e.name] = view
    return _ordered(tensors, metadata, who)


def check_compatible(weights: Mapping[str, Array], spec: ModelSpec, who: str) -> None:
    """Same tensor names, in the same order, with the same shapes and dtypes as `spec`."""
    expected = [t.name for t in spec]
    got = list(weights)
    if sorted(got) != sorted(expected):
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        # the first difference in the model's own order: what a user fixes first
        first = next((n for n in expected if n not in weights), None)
        lead = (
            f"tensor {first!r} of the global model is missing"
            if first is not None
            else f"tensor {next(n for n in got if n not in set(expected))!r} is not in the global model"
        )
        raise IncompatibleUpdateError(
            f"{who}: {lead}; its tensors differ from the global model: missing {missing}, "
            f"unexpected {extra}",
            reason="names",
        )
    for t in spec:
        arr = weights[t.name]
        if tuple(arr.shape) != t.shape:
            raise IncompatibleUpdateError(
                f"{who} has tensor {t.name!r} of shape {tuple(arr.shape)}; the global model has {t.shape}",
                reason="shape",
            )
        if str(arr.dtype) != t.dtype:
            raise IncompatibleUpdateError(
                f"{who} has tensor {t.name!r} of dtype {arr.dtype}; the global model has {t.dtype}",
                reason="dtype",
            )


def check_finite(weights: Mapping[str, Array], who: str) -> None:
    for name, arr in weights.items():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InvalidWeightsError(
                f"{who} has {bad} NaN/Inf value(s) in tensor {name!r}", reason="non_finite"
            )


def delta_norm(weights: Mapping[str, Array], base: Mapping[str, Array]) -> float:
    """L2 norm of `weights - base` over all tensors, accumulated in float64."""
    total = 0.0
    for name, arr in weights.items():
        diff = arr.astype(np.float64) - base[name].astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def check_norm(
    weights: Mapping[str, Array], base: Mapping[str, Array], bound: float | None, who: str
) -> float:
    norm = delta_norm(weights, base)
    if bound is not None and not norm <= bound:
        raise InvalidWeightsError(
            f"{who} moves the model by L2 norm {norm:.6g}; the task allows at most {bound:.6g}",
            reason="norm",
        )
    return norm


def validate(
    weights: Mapping[str, Array],
    spec: ModelSpec,
    who: str,
    *,
    base: Mapping[str, Array] | None = None,
    max_norm: float | None = None,
) -> None:
    """Everything an update must satisfy before it may touch the global model."""
    check_compatible(weights, spec, who)
    check_finite(weights, who)
    if base is not None and max_norm is not None:
        check_norm(weights, base, max_norm, who)


def total_bytes(weights: Iterable[Array]) -> int:
    return sum(int(a.nbytes) for a in weights)
