"""An update's object checked at its verdict: whole when the model is small, else streamed.

Both ways check the same things, in the same order of blame: the SHA-256 the record
claims (a mismatch is not the client's word), then `max_num_examples`, the header
against the global model's spec, and every value finite (what the object holds: the
client's word, `attributed`). A small object (up to `AGGREGATE_SIZING.whole_check_bytes`)
is read and decoded whole (`decisions.load_payload`, as ever) and its decoded weights
handed back for the cache (the round's close folds them from memory). A larger one is
read by ranged GETs chunk by chunk (`IfMatch` on its first read's ETag), hashed and
checked for NaN/Inf as it arrives, never decoded whole: the close reads it again,
streamed. A task with `max_update_norm` needs the update's delta against its base
model, so its updates are checked whole, whatever their size; so does a task whose silos
upload half-precision deltas (`update_encoding`: the local model is base + delta).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import numpy as np

from fedasync import limits
from fedasync.aws.ranged import HEAD_PROBE, Ranged, plan, read_header, shadow
from fedasync.core import codec
from fedasync.core.codec import Array, Weights
from fedasync.core.decisions import check_examples, describe, load_payload
from fedasync.core.errors import (
    ChecksumMismatchError,
    FedAsyncError,
    InvalidWeightsError,
    PayloadTooLargeError,
    SchemaError,
)
from fedasync.core.messages import UpdateRecord
from fedasync.limits import AggregateSizing
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView


async def check_update(
    store: ServerStore,
    view: TaskView,
    record: UpdateRecord,
    base: Mapping[str, Array] | None = None,
    *,
    sizing: AggregateSizing | None = None,
) -> Weights | None:
    """Check the update's object; its decoded weights when read whole (None: streamed)."""
    sizing = sizing or limits.AGGREGATE_SIZING
    cfg, key = view.cfg, record.s3_key
    obj = await store.objects.ranged(key, named_by_silo=True)
    try:
        head = await obj.read(0, HEAD_PROBE)
    except SchemaError:  # an empty object (S3 refuses a range of it): its SHA-256 is wrong
        return load_payload(b"", record, view.spec, cfg, base=base)
    if obj.size > cfg.max_model_bytes:
        raise PayloadTooLargeError(
            f"object {key!r} is {obj.size} bytes; the limit is {cfg.max_model_bytes}"
        )
    if obj.size <= sizing.whole_check_bytes or cfg.max_update_norm or cfg.update_encoding:
        data = head if obj.size <= len(head) else head + await obj.read(len(head), obj.size)
        return load_payload(data, record, view.spec, cfg, base=base)
    await _check_streamed(obj, record, view, sizing)
    return None


async def _check_streamed(
    obj: Ranged, record: UpdateRecord, view: TaskView, sizing: AggregateSizing
) -> None:
    who = describe(record)
    try:
        header, entries = await read_header(obj, HEAD_PROBE, view.cfg.max_model_bytes, who)
        codec.check_compatible(shadow(entries), view.spec, who)
    except FedAsyncError as exc:  # blamed on the client only if the bytes are its record's
        _check_digest(await obj.sha256(sizing.chunk_bytes), record)
        raise _attributed(exc) from None
    digest = hashlib.sha256(header)
    bad: dict[str, int] = {}
    ranges = plan(entries, len(header), sizing.chunk_bytes)
    async for data, span in _ranged(obj, ranges, sizing.read_ahead):
        digest.update(data)
        await asyncio.to_thread(_count_non_finite, data, span.pieces, bad)
    _check_digest(digest.hexdigest(), record)
    try:
        check_examples(record, view.cfg)
        for t in view.spec:
            if bad.get(t.name):
                raise InvalidWeightsError(
                    f"{who} has {bad[t.name]} NaN/Inf value(s) in tensor {t.name!r}",
                    reason="non_finite",
                )
    except FedAsyncError as exc:
        raise _attributed(exc) from None


async def _ranged(
    obj: Ranged, ranges: Sequence[Any], ahead: int
) -> AsyncGenerator[tuple[bytes, Any], None]:
    """Each range's bytes, in order, `ahead` reads in flight."""
    pending: deque[asyncio.Future[bytes]] = deque()
    upcoming = iter(ranges)
    try:
        for span in ranges:
            while len(pending) < max(ahead, 1) and (nxt := next(upcoming, None)) is not None:
                pending.append(asyncio.ensure_future(obj.read(nxt.begin, nxt.end)))
            yield await pending.popleft(), span
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _count_non_finite(data: bytes, pieces: Sequence[Any], bad: dict[str, int]) -> None:
    for p in pieces:
        values = np.frombuffer(data, p.dtype, p.count, p.offset)
        count = int(values.size - np.count_nonzero(np.isfinite(values)))
        if count:
            bad[p.name] = bad.get(p.name, 0) + count


def _check_digest(digest: str, record: UpdateRecord) -> None:
    if digest != record.sha256:
        raise ChecksumMismatchError(
            f"{describe(record)}: object {record.s3_key!r} has SHA-256 {digest}; the record "
            f"says {record.sha256}"
        )


def _attributed(exc: FedAsyncError) -> FedAsyncError:
    exc.attributed = True  # only the client can have put these bytes there
    return exc


async def iter_checked(
    store: ServerStore,
    view: TaskView,
    records: Sequence[UpdateRecord],
    base: Mapping[str, Array] | None = None,
    *,
    ahead: int | None = None,
) -> AsyncGenerator[Weights | None, None]:
    """`check_update` of each record, in order, `ahead` in flight; a failed check raises at
    its position. Use with `contextlib.aclosing` when stopping early."""
    ahead = ahead or limits.AGGREGATE_SIZING.read_ahead
    pending: deque[asyncio.Future[Weights | None]] = deque()
    upcoming = iter(records)
    try:
        for _ in records:
            while len(pending) < max(ahead, 1) and (nxt := next(upcoming, None)) is not None:
                pending.append(asyncio.ensure_future(check_update(store, view, nxt, base)))
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
