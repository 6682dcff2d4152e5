"""Ranged reads of a safetensors object: its header first, then its tensors chunk by chunk.

A reader folds an update without ever holding it whole: one ranged GET for the header
(checked by `stheader.parse_layout` before a data byte is asked for, and against the
global model's spec if one is given), then the data section in ranges of at most
`chunk_bytes`, in file order, `ahead` of them in flight. Small tensors share a range;
a large one spans several, cut at element boundaries. Every byte read is hashed as it
arrives and the SHA-256 is compared at the end: a mismatch raises the same
`ChecksumMismatchError` the whole-object path raises, so a caller folds what it is given
but trusts its sum only once the stream has ended cleanly. Every GET after the first
carries `IfMatch` on the first one's ETag: an object rewritten mid-read is refused too.
Memory: about `chunk_bytes * ahead`, whatever the model's size.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from botocore.exceptions import ClientError

from fedasync.aws.session import error_code, object_missing
from fedasync.core import codec
from fedasync.core.codec import NUMPY_DTYPES, Array, ModelSpec
from fedasync.core.errors import (
    ChecksumMismatchError,
    MissingObjectError,
    PayloadTooLargeError,
    RegistryError,
    SchemaError,
)
from fedasync.core.stheader import Entry, parse_layout

HEAD_PROBE = 64 * 1024  # the first GET: the whole header of any ordinary model
CHUNK_BYTES = 8 * 1024 * 1024
AHEAD = 2


@dataclass(frozen=True)
class _Piece:
    name: str
    dtype: np.dtype[Any]
    start: int  # flat element offset within the tensor
    offset: int  # byte offset within its range
    count: int


@dataclass(frozen=True)
class _Range:
    begin: int  # absolute byte offsets in the object, end exclusive
    end: int
    pieces: tuple[_Piece, ...]


def plan(entries: list[Entry], base: int, chunk_bytes: int) -> list[_Range]:
    """The data section as ranges of at most `chunk_bytes` (or one element, if larger)."""
    ranges: list[_Range] = []
    begin, at, pieces = base, base, list[_Piece]()
    for e in sorted(entries, key=lambda e: e.begin):
        dtype = NUMPY_DTYPES[e.dtype]
        at, end = base + e.begin, base + e.end  # tiled: `at` is where the last one ended
        while at < end:
            room = (begin + chunk_bytes - at) // dtype.itemsize
            if room <= 0 and pieces:  # this range is full
                ranges.append(_Range(begin, at, tuple(pieces)))
                begin, pieces = at, []
                continue
            count = min((end - at) // dtype.itemsize, max(room, 1))
            start = (at - base - e.begin) // dtype.itemsize
            pieces.append(_Piece(e.name, dtype, start, at - begin, count))
            at += count * dtype.itemsize
    if pieces:
        ranges.append(_Range(begin, at, tuple(pieces)))
    return ranges


class Ranged(Protocol):
    """One object version read by byte ranges (`Objects.ranged` opens one): the first
    read's version pins the rest (a rewrite meanwhile is `ChecksumMismatchError`), and
    the first read's bytes are kept (`head`)."""

    key: str
    size: int
    head: bytes

    async def read(self, begin: int, end: int) -> bytes: ...
    async def sha256(self, chunk_bytes: int) -> str: ...


class Opens(Protocol):
    """What opens an object for ranged reads: the `Objects` port."""

    async def ranged(self, key: str, *, named_by_silo: bool = False) -> Ranged: ...


class RangedObject:
    """Ranged GETs of one object version (the first read's ETag pins the rest). The first
    read's bytes are kept (`head`): a later read inside them costs no request, so an
    object smaller than the probe is read once."""

    def __init__(self, s3: Any, bucket: str, key: str, named_by_silo: bool) -> None:
        self._s3, self._bucket, self.key, self._silo = s3, bucket, key, named_by_silo
        self.etag: str | None = None
        self.size = 0
        self.head = b""

    async def read(self, begin: int, end: int) -> bytes:
        if self.etag is not None and end <= len(self.head):
            return self.head[begin:end]
        extra = {"IfMatch": self.etag} if self.etag else {}
        try:
            resp = await self._s3.get_object(
                Bucket=self._bucket, Key=self.key, Range=f"bytes={begin}-{end - 1}", **extra
            )
        except ClientError as exc:
            raise self._error(exc) from exc
        first = self.etag is None
        if first:
            self.etag = resp["ETag"]
            self.size = int(str(resp["ContentRange"]).rsplit("/", 1)[1])
        async with resp["Body"] as body:
            data = bytes(await body.read())
        if len(data) != min(end, self.size) - begin:
            raise RegistryError(f"object {self.key!r}: bytes {begin}-{end - 1} came back short")
        if first and begin == 0:
            self.head = data
        return data

    async def sha256(self, chunk_bytes: int) -> str:
        """The SHA-256 of the whole object (this version), read `chunk_bytes` at a time."""
        digest = hashlib.sha256()
        for begin in range(0, self.size, chunk_bytes):
            digest.update(await self.read(begin, min(begin + chunk_bytes, self.size)))
        return digest.hexdigest()

    def _error(self, exc: ClientError) -> Exception:
        code = error_code(exc)
        if code == "InvalidRange":  # a GET of bytes=0-... on an empty object
            return SchemaError(f"object {self.key!r} is empty: no safetensors header")
        if code in ("PreconditionFailed", "412"):
            return ChecksumMismatchError(
                f"object {self.key!r} changed while it was being read (ETag no longer {self.etag})"
            )
        if object_missing(exc, unlisted=self._silo):
            error = MissingObjectError if self._silo else RegistryError
            return error(
                f"object {self.key!r} is missing from the model bucket (S3 answered {code})"
            )
        return exc


async def stream_tensors(
    objects: Opens,
    key: str,
    *,
    sha256: str,
    spec: ModelSpec | None = None,
    max_bytes: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    ahead: int = AHEAD,
    head_probe: int = HEAD_PROBE,
    named_by_silo: bool = False,
    who: str | None = None,
) -> AsyncGenerator[tuple[str, int, Array], None]:
    """(tensor name, flat element offset, read-only chunk) for the object at `key`, in file
    order; SHA-256 checked once the last chunk is out. Use with `contextlib.aclosing`.
    Values are not checked here (finiteness is the caller's, per chunk, if it needs it)."""
    who = who or f"object {key!r}"
    obj = await objects.ranged(key, named_by_silo=named_by_silo)
    header, entries = await read_header(obj, head_probe, max_bytes, who)
    if spec is not None:
        codec.check_compatible(shadow(entries), spec, who)
    digest = hashlib.sha256(header)
    ranges = plan(entries, len(header), chunk_bytes)
    pending: deque[asyncio.Future[bytes]] = deque()
    upcoming = iter(ranges)
    try:
        for r in ranges:
            while len(pending) < max(ahead, 1) and (nxt := next(upcoming, None)) is not None:
                pending.append(asyncio.ensure_future(obj.read(nxt.begin, nxt.end)))
            data = await pending.popleft()
            digest.update(data)
            for p in r.pieces:
                yield p.name, p.start, np.frombuffer(data, p.dtype, p.count, p.offset)
            del data
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if digest.hexdigest() != sha256:
        raise ChecksumMismatchError(
            f"{who}: object {key!r} has SHA-256 {digest.hexdigest()}; expected {sha256}"
        )


async def open_object(
    objects: Opens,
    key: str,
    *,
    max_bytes: int | None = None,
    head_probe: int = HEAD_PROBE,
    named_by_silo: bool = False,
    who: str | None = None,
) -> tuple[Ranged, bytes, list[Entry]]:
    """The object at `key` opened for ranged reads: its header checked, and its tensors."""
    obj = await objects.ranged(key, named_by_silo=named_by_silo)
    header, entries = await read_header(obj, head_probe, max_bytes, who or f"object {key!r}")
    return obj, header, entries


async def read_header(
    obj: Ranged, head_probe: int, max_bytes: int | None, who: str
) -> tuple[bytes, list[Entry]]:
    """The object's first 8 + header-length bytes, checked, and the tensors they declare."""
    head = await obj.read(0, head_probe)
    if max_bytes is not None and obj.size > max_bytes:
        raise PayloadTooLargeError(f"{who} is {obj.size} bytes; the limit is {max_bytes}")
    codec.sniff(head[:9], obj.size, who)  # the header length is bounded (16 MiB) from here
    base = 8 + struct.unpack("<Q", head[:8])[0]
    if len(head) < base:
        head += await obj.read(len(head), base)
    _, entries = parse_layout(head[8:base], obj.size - base, who)
    return head[:base], entries


def shadow(entries: list[Entry]) -> dict[str, Array]:
    """Zero-byte stand-ins with each entry's shape and dtype, for `check_compatible`."""
    return {e.name: np.broadcast_to(np.zeros((), NUMPY_DTYPES[e.dtype]), e.shape) for e in entries}
