"""The safetensors header, read and checked by us before the library interprets a byte.

A safetensors header is a flat JSON object: tensor name -> {dtype, shape, data_offsets},
plus an optional `__metadata__` object of strings. So a nesting depth above 3 is not a
header, and is refused *before* `json.loads` (whose recursion a 5,000-deep `[[[...` would
exhaust: a `RecursionError` no caller catches). Every entry is checked here too, with
Python integers (no overflow): a dtype fedasync reads, a shape of non-negative ints,
offsets inside the payload that hold exactly shape x itemsize bytes. Whatever is wrong
is a `SchemaError` with a reason, never a `KeyError` from the library's dtype table.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedasync.core.errors import SchemaError

# what fedasync reads -> bytes per element (BF16 through ml_dtypes; fp8 is a later issue)
SUPPORTED_DTYPES: dict[str, int] = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
# the SecAgg ring's words (a masked input, `fedasync.core.secagg.masked_wire`), never a model's
RING_DTYPES: dict[str, int] = {"U32": 4, "U64": 8}
# every other dtype the safetensors format defines (refused, but named as such)
OTHER_SAFETENSORS_DTYPES: tuple[str, ...] = (
    "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "C64",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "E8M0",
)  # fmt: skip
HEADER_MAX_DEPTH = 3  # {name: {"shape": [..]}}
ORDER_MAX_DEPTH = 1  # ["name", ...]
# a JSON string; an unterminated one runs to the end (json.loads refuses it there). The
# closing quote is optional so no match is ever retried from a later quote: a header of
# escaped quotes would otherwise cost quadratic time
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_OPEN_CLOSE = np.zeros(256, dtype=np.int8)
_OPEN_CLOSE[[ord("{"), ord("[")]] = 1
_OPEN_CLOSE[[ord("}"), ord("]")]] = -1


def nesting_depth(text: bytes) -> int:
    """The deepest `{`/`[` nesting of a JSON text, strings aside; linear and recursion-free.

    On text that is not JSON the figure may be off, but only ever where `json.loads`
    would stop with an error anyway (a quote opens a string wherever it is valid)."""
    bare = _STRING.sub(b"", text)
    if not bare:
        return 0
    steps = _OPEN_CLOSE[np.frombuffer(bare, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def loads_bounded(text: bytes | str, max_depth: int, what: str, who: str) -> Any:
    """`json.loads`, refusing a nesting deeper than `max_depth` before parsing."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise SchemaError(
            f"{who}: {what} nests {depth} levels deep; at most {max_depth} expected",
            reason="too_deep",
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{who}: {what} is not valid JSON") from exc
    except ValueError as exc:  # UnicodeDecodeError; an integer of over 4,300 digits
        raise SchemaError(f"{who}: {what} is not valid JSON ({str(exc)[:120]})") from exc


@dataclass(frozen=True)
class Entry:
    """One tensor of a checked header: where its bytes lie within the data section."""

    name: str
    dtype: str  # the safetensors name: F32, BF16, ...
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_header(header: bytes, body_len: int, who: str) -> dict[str, str] | None:
    """Check a whole safetensors header; returns its `__metadata__` (None if absent)."""
    return parse_layout(header, body_len, who)[0]


def parse_layout(
    header: bytes, body_len: int, who: str, dtypes: Mapping[str, int] = SUPPORTED_DTYPES
) -> tuple[dict[str, str] | None, list[Entry]]:
    """Check a whole header; its `__metadata__` and its tensors in header order.

    Beyond each entry, the tensors must tile the data section exactly (sorted by offset,
    each beginning where the previous ends, the last ending at the end), as the
    safetensors library requires: arrays viewed straight on the bytes then never
    overlap and no byte goes unread."""
    parsed = loads_bounded(header, HEADER_MAX_DEPTH, "safetensors header", who)
    if not isinstance(parsed, dict):
        raise _invalid(who, f"its header is a JSON {type(parsed).__name__}, not an object")
    meta = parsed.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise _invalid(who, "its __metadata__ must map names to strings")
    entries = [_check_entry(name, e, body_len, who, dtypes) for name, e in parsed.items()]
    _check_tiling(entries, body_len, who)
    return meta, entries


def _check_tiling(entries: list[Entry], body_len: int, who: str) -> None:
    at = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != at:
            raise _invalid(
                who,
                f"tensor {e.name!r} begins at data byte {e.begin}; the tensors before it end "
                f"at {at} (tensors must neither overlap nor leave gaps)",
            )
        at = e.end
    if at != body_len:
        raise _invalid(who, f"its tensors end at data byte {at} of {body_len}; the rest is unread")


def write_header(
    layout: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]
) -> bytes:
    """The length prefix and header for tensors (name, dtype, shape, bytes) laid out in
    that order, as the safetensors library writes them: compact JSON, UTF-8 unescaped,
    padded with spaces so that the data starts 8-byte aligned."""
    header: dict[str, Any] = {"__metadata__": metadata}
    at = 0
    for name, dtype, shape, nbytes in layout:
        header[name] = {
            "dtype": dtype,
            "shape": [int(d) for d in shape],
            "data_offsets": [at, at + int(nbytes)],
        }
        at += int(nbytes)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def _check_entry(
    name: str, entry: Any, body_len: int, who: str, dtypes: Mapping[str, int]
) -> Entry:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(who, f"tensor {name!r} must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    itemsize = dtypes.get(dtype) if isinstance(dtype, str) else None
    if itemsize is None:
        what = (
            "a safetensors dtype fedasync does not support"
            if dtype in (*OTHER_SAFETENSORS_DTYPES, *SUPPORTED_DTYPES)
            else "not a safetensors dtype"
        )
        raise SchemaError(
            f"{who}: tensor {name!r} has dtype {dtype!r}, {what}; accepted: {', '.join(dtypes)}"
            + (" (bfloat16, float16, float32, float64)" if dtypes is SUPPORTED_DTYPES else ""),
            reason="unsupported_dtype",
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _invalid(who, f"tensor {name!r} has shape {shape!r}; expected a list of ints >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise _invalid(who, f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    need = math.prod(shape) * itemsize
    if not begin <= end <= body_len or end - begin != need:
        raise _invalid(
            who,
            f"tensor {name!r} of shape {tuple(shape)} ({dtype}) needs {need} bytes; its "
            f"data_offsets [{begin}, {end}] do not hold that within the {body_len} data bytes",
        )
    return Entry(name, dtype, tuple(shape), begin, end)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _invalid(who: str, why: str) -> SchemaError:
    return SchemaError(f"{who} is not valid safetensors: {why}")
