"""SecAgg messages as JSON-ready dicts, for the wiring (S3 objects, DynamoDB items).

Each message becomes `{"schema_version": 1, "kind": ..., fields}`, bytes as standard
base64, a masked input's vector as the base64 of its little-endian words with its dtype.
`decode` is strict: an unknown kind or version, a missing or extra field, bad base64 or a
vector of the wrong size is a `secagg_protocol` error, never a half-read message. The
contents are public or sealed (keys, ciphertexts, signatures, masked vectors) except the
revealed shares of an `Unmasking`, which the server may read but must not log.
On the phases' wire a masked input is not JSON but safetensors (`masked_wire`, schema
version 2); its JSON form here serves tests and tools.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from fedasync.core.secagg.errors import PROTOCOL, SecAggError
from fedasync.core.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    RevealedShare,
    SurvivorSignature,
    Unmasking,
)

SCHEMA_VERSION = 1
Message = KeyAdvert | EncryptedShares | MaskedInput | SurvivorSignature | Unmasking
_KINDS: dict[str, type[Any]] = {
    "key_advert": KeyAdvert,
    "encrypted_shares": EncryptedShares,
    "masked_input": MaskedInput,
    "survivor_signature": SurvivorSignature,
    "unmasking": Unmasking,
}
_NAMES = {cls: kind for kind, cls in _KINDS.items()}
_DTYPES: dict[str, np.dtype[Any]] = {"uint32": np.dtype("<u4"), "uint64": np.dtype("<u8")}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise SecAggError(f"{what} is not a base64 string", reason=PROTOCOL)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecAggError(f"{what} is not valid base64", reason=PROTOCOL) from exc


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bytes):
            out[f.name] = _b64(value)
        elif isinstance(value, np.ndarray):
            out[f.name] = _b64(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
            out["dtype"] = value.dtype.name
        elif isinstance(value, tuple):
            out[f.name] = [_plain(item) for item in value]
        else:
            out[f.name] = value
    return out


def encode(message: Message) -> dict[str, Any]:
    """The message as a dict of str, int and lists (json.dumps-ready)."""
    return {"schema_version": SCHEMA_VERSION, "kind": _NAMES[type(message)], **_plain(message)}


def _build(cls: type[Any], data: Mapping[str, Any], what: str) -> Any:
    expected = {f.name for f in fields(cls)} | ({"dtype"} if cls is MaskedInput else set())
    if set(data) != expected:
        raise SecAggError(
            f"{what} has fields {sorted(data)}, not {sorted(expected)}", reason=PROTOCOL
        )
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = data[f.name]
        if f.name == "vector":
            name = data["dtype"]
            dtype = _DTYPES.get(name) if isinstance(name, str) else None
            raw = _unb64(value, f"{what}.vector")
            if dtype is None or len(raw) % dtype.itemsize:
                raise SecAggError(f"{what}.vector is not uint32/uint64 words", reason=PROTOCOL)
            value = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        elif f.name == "shares":
            if not isinstance(value, list):
                raise SecAggError(f"{what}.shares is not a list", reason=PROTOCOL)
            value = tuple(_build(RevealedShare, v, f"{what}.shares[]") for v in value)
        elif f.type in {"bytes", bytes}:
            value = _unb64(value, f"{what}.{f.name}")
        elif not isinstance(value, str):
            raise SecAggError(f"{what}.{f.name} is not a string", reason=PROTOCOL)
        values[f.name] = value
    if cls is RevealedShare and values["kind"] not in {"mask_seed", "mask_key"}:
        raise SecAggError(f"{what}.kind is {values['kind']!r}", reason=PROTOCOL)
    return cls(**values)


def decode(data: Mapping[str, Any]) -> Message:
    """The message a dict from `encode` describes, or a `secagg_protocol` error."""
    body = dict(data)
    version, kind = body.pop("schema_version", None), body.pop("kind", None)
    if version != SCHEMA_VERSION or kind not in _KINDS:
        raise SecAggError(
            f"not a SecAgg message (version {version!r}, kind {kind!r})", reason=PROTOCOL
        )
    message: Message = _build(_KINDS[str(kind)], body, str(kind))
    return message
