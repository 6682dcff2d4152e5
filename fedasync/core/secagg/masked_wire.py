"""A masked input on the wire: a safetensors object of the ring's words, not JSON.

The object holds one tensor, `masked_input`, of dtype U32 (b <= 32) or U64, shape [d]:
y_u's little-endian words as they are, so a reader views them with `np.frombuffer` (no
base64, no JSON of megabytes, 4 bytes a coordinate at b = 32 instead of 5.3). The small
envelope sits in the header's `__metadata__` under `fedasync.secagg`, a flat JSON object
`{"schema_version": 2, "kind": "masked_input", "client_id": u, "signature": base64}`.

What the Ed25519 signature covers is unchanged (`messages.masked_statement`): the
length-prefixed (protocol label, task, round, t, "masked", client_id, word size,
SHA-256 of the vector's little-endian bytes), so the exact bytes of the tensor, the
silo, the task and the round are all authenticated; the envelope itself needs no
signature of its own (its one other field is the signature). The header is checked by
`fedasync.core.stheader` before a byte is interpreted (depth, offsets that tile the data
exactly); anything else wrong (another tensor, a shape that is not [d], a missing or extra
envelope field, bad base64) is a `secagg_protocol` error with a reason, never a
half-read message.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np

from fedasync.core.errors import SchemaError
from fedasync.core.secagg.errors import PROTOCOL, SecAggError
from fedasync.core.secagg.messages import MaskedInput
from fedasync.core.stheader import RING_DTYPES, loads_bounded, parse_layout, write_header

SCHEMA_VERSION = 2
TENSOR = "masked_input"
ENVELOPE_KEY = "fedasync.secagg"
CONTENT_TYPE = "application/octet-stream"
_NAMES = {4: "U32", 8: "U64"}
_NUMPY: dict[str, np.dtype[Any]] = {"U32": np.dtype("<u4"), "U64": np.dtype("<u8")}
_FIELDS = {"schema_version", "kind", "client_id", "signature"}
MAX_HEADER = 64 * 1024  # one tensor entry and the envelope: a few hundred bytes


def encode_masked(message: MaskedInput) -> bytes:
    """The masked input as safetensors bytes (deterministic: same message, same bytes)."""
    vec = message.vector
    if vec.ndim != 1 or vec.dtype.itemsize not in _NAMES or vec.dtype.kind != "u":
        raise ValueError(f"a masked input is a 1-d uint32/uint64 vector, not {vec.dtype}")
    words = np.ascontiguousarray(vec, dtype=vec.dtype.newbyteorder("<"))
    envelope = {
        "schema_version": SCHEMA_VERSION,
        "kind": "masked_input",
        "client_id": message.client_id,
        "signature": base64.b64encode(message.signature).decode("ascii"),
    }
    layout = [(TENSOR, _NAMES[vec.dtype.itemsize], vec.shape, words.nbytes)]
    header = write_header(layout, {ENVELOPE_KEY: json.dumps(envelope, sort_keys=True)})
    return b"".join([header, words.view(np.uint8).data])


def decode_masked(raw: bytes, who: str = "masked input") -> MaskedInput:
    """The masked input `encode_masked` wrote, its vector a read-only view on `raw` (no
    copy on a little-endian machine), or a `secagg_protocol` error saying what is wrong."""
    if len(raw) < 8:
        raise _bad(f"{who} is {len(raw)} bytes, not a safetensors object")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > min(MAX_HEADER, len(raw) - 8):
        raise _bad(f"{who} claims a {header_len}-byte header in {len(raw)} bytes")
    base = 8 + header_len
    try:
        meta, entries = parse_layout(raw[8:base], len(raw) - base, who, RING_DTYPES)
    except SchemaError as exc:
        raise _bad(str(exc)) from None
    if [e.name for e in entries] != [TENSOR] or len(entries[0].shape) != 1:
        raise _bad(f"{who} must hold exactly one 1-d tensor {TENSOR!r}")
    entry = entries[0]
    if entry.shape[0] == 0:
        raise _bad(f"{who} holds no words")
    envelope = _envelope(meta, who)
    dtype = _NUMPY[entry.dtype]
    vec = np.frombuffer(raw, dtype=dtype, count=entry.shape[0], offset=base + entry.begin)
    vector = vec.astype(dtype.newbyteorder("="), copy=False)  # a copy on big-endian only
    vector.flags.writeable = False
    return MaskedInput(envelope["client_id"], vector, _signature(envelope["signature"], who))


def _envelope(meta: dict[str, str] | None, who: str) -> dict[str, Any]:
    if meta is None or set(meta) != {ENVELOPE_KEY}:
        raise _bad(f"{who} has no {ENVELOPE_KEY!r} envelope (metadata {sorted(meta or {})})")
    try:
        got = loads_bounded(meta[ENVELOPE_KEY], 1, "envelope", who)
    except SchemaError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(got, dict) or set(got) != _FIELDS:
        names = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise _bad(f"{who}'s envelope has fields {names}, not {sorted(_FIELDS)}")
    if got["schema_version"] != SCHEMA_VERSION or got["kind"] != "masked_input":
        raise _bad(
            f"{who} is not a masked input (version {got['schema_version']!r}, kind {got['kind']!r})"
        )
    if not isinstance(got["client_id"], str):
        raise _bad(f"{who}'s envelope client_id is not a string")
    return got


def _signature(text: object, who: str) -> bytes:
    if not isinstance(text, str):
        raise _bad(f"{who}'s signature is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{who}'s signature is not valid base64") from None


def _bad(message: str) -> SecAggError:
    return SecAggError(message, reason=PROTOCOL)
