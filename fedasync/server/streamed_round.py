"""A sync FedAvg round folded from ranged reads, its new global written by multipart upload.

For a plain FedAvg round (no central DP, clipping, server optimizer or `max_update_norm`:
those need whole models) the close never holds a model: the new global's data section is
cut into ranges (`fedasync.core.streamfold`), and for each range every accepted update's
bytes of it are read by a ranged GET (`read_ahead` in flight, `IfMatch` on the ETag of
its first read), folded into one float64 sum of the range, and the range's result
appended to the new global's file under the handler's temporary directory, hashed as it
is written. Each update's bytes are hashed as they arrive; at the end every update must
hash to the SHA-256 its verdict recorded (else `ChecksumMismatchError`: the round is not
aggregated, the head stays, as for a whole read), and the file goes up by the silos'
multipart transfer (`Objects.upload_file`, not tagged as a local update) with its SHA-256.
An update a warm container validated (the cache) is folded from memory, unread.

Peak memory: about `(read_ahead + 3) x chunk_bytes` while folding, `read_ahead x
part_bytes` while uploading (`fedasync.limits.AGGREGATE_SIZING`), whatever the model's
size and the number of updates; the model's bytes go through /tmp.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedasync import limits
from fedasync.aws.ranged import Ranged, open_object, shadow
from fedasync.core import codec, keys
from fedasync.core.codec import Array, Weights
from fedasync.core.decisions import describe
from fedasync.core.errors import ChecksumMismatchError, GlobalRefusedError, SchemaError
from fedasync.core.messages import UpdateRecord
from fedasync.core.stheader import Entry
from fedasync.core.streamfold import Range, RangeSum, global_layout, plan_ranges, refusal
from fedasync.limits import AggregateSizing
from fedasync.server.cache import CACHE
from fedasync.server.spill import spill_root
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

_MAX_PARTS = 10_000  # S3's most parts of one upload


@dataclass
class _Update:
    record: UpdateRecord
    cached: Weights | None = None
    obj: Ranged | None = None
    base: int = 0  # where its data section begins
    where: dict[str, Entry] | None = None  # its tensors, when laid out otherwise than ours
    digest: Any = None  # hashlib's running SHA-256 of what was read, in order


async def close_streamed(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    records: list[UpdateRecord],
    *,
    sizing: AggregateSizing | None = None,
) -> tuple[str, int] | GlobalRefusedError:
    """Fold the round's accepted updates and store version round_id + 1: its (SHA-256,
    size), or the refusal of a new global with NaN/Inf (nothing stored then)."""
    sizing = sizing or limits.AGGREGATE_SIZING
    with tempfile.TemporaryDirectory(prefix="fedasync-global-", dir=spill_root()) as tmp:
        path = Path(tmp) / "global.safetensors"
        made = await fold_to_file(store, view, round_id, records, path, sizing=sizing)
        if isinstance(made, GlobalRefusedError):
            return made
        sha, size = made
        await store.objects.upload_file(
            keys.global_key(view.task_name, round_id + 1), path, sha256=sha,
            part_size=max(sizing.part_bytes, -(-size // _MAX_PARTS)),
            parts_in_flight=sizing.read_ahead, local_update=False,
        )  # fmt: skip
    return sha, size


async def fold_to_file(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    records: list[UpdateRecord],
    path: Path,
    *,
    sizing: AggregateSizing | None = None,
) -> tuple[str, int] | GlobalRefusedError:
    """The round's FedAvg written to `path` as its ranges complete, every update verified
    against its verdict's SHA-256; the file's (SHA-256, size), or the refusal."""
    sizing = sizing or limits.AGGREGATE_SIZING
    header, entries = global_layout(view.spec)
    ranges = plan_ranges(entries, sizing.chunk_bytes)
    updates = await asyncio.gather(*(_open(store, view, r, entries) for r in records))
    total = sum(r.num_examples for r in records)
    if total <= 0:
        raise SchemaError(
            f"round {round_id} of task {view.task_name!r}: {len(records)} update(s) report "
            "0 examples in total; FedAvg needs at least one example"
        )
    non_finite: dict[str, int] = {}
    size = len(header)
    with path.open("wb") as fh:
        digest = hashlib.sha256(header)
        fh.write(header)
        reads = _reads(updates, ranges, sizing.read_ahead)
        for span in ranges:
            out = await _fold_range(span, updates, reads, total, non_finite)
            digest.update(out)
            size += len(out)
            await asyncio.to_thread(_write, fh, out)
    await _verify(updates, round_id, sizing.chunk_bytes)
    who = f"round {round_id} of task {view.task_name!r}: the FedAvg of its "
    refused = refusal(non_finite, view.spec, who + f"{len(records)} accepted update(s)")
    if refused is not None:
        return refused
    return digest.hexdigest(), size


async def _open(
    store: ServerStore, view: TaskView, record: UpdateRecord, ours: list[Entry]
) -> _Update:
    """The update from the cache, else opened for ranged reads (its header checked)."""
    cached = CACHE.get(record.sha256)
    if cached is not None:
        return _Update(record, cached=cached)
    who = describe(record)
    obj, header, entries = await open_object(
        store.objects, record.s3_key, max_bytes=view.cfg.max_model_bytes,
        named_by_silo=True, who=who,
    )  # fmt: skip
    try:
        codec.check_compatible(shadow(entries), view.spec, who)
    except SchemaError as exc:  # validated at its verdict: these are not those bytes
        raise _changed(record, f"its header no longer fits the model ({exc.message})") from exc
    at = {e.name: e for e in entries}
    same = all(at[e.name].begin == e.begin for e in ours)
    return _Update(
        record, obj=obj, base=len(header), where=None if same else at,
        digest=hashlib.sha256(header) if same else None,
    )  # fmt: skip


async def _fold_range(
    span: Range,
    updates: list[_Update],
    reads: AsyncGenerator[bytes | list[Array], None],
    total: int,
    non_finite: dict[str, int],
) -> bytes:
    acc = RangeSum(span)
    for u in updates:
        got = await anext(reads)
        n = u.record.num_examples
        if isinstance(got, list):
            acc.add_values(got, n)
            continue
        if u.digest is not None:
            u.digest.update(got)
        await asyncio.to_thread(acc.add, got, n)
    return await asyncio.to_thread(acc.finish, total, non_finite)


async def _reads(
    updates: list[_Update], ranges: list[Range], ahead: int
) -> AsyncGenerator[bytes | list[Array], None]:
    """Each range's bytes of each update, in (range, update) order, `ahead` reads in flight."""
    jobs = ((span, u) for span in ranges for u in updates)
    pending: deque[asyncio.Future[bytes | list[Array]]] = deque()
    try:
        for span, u in jobs:
            pending.append(asyncio.ensure_future(_read(span, u)))
            if len(pending) >= max(ahead, 1):
                break
        while pending:
            got = await pending.popleft()
            following = next(jobs, None)
            if following is not None:
                pending.append(asyncio.ensure_future(_read(*following)))
            yield got
            del got
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def _read(span: Range, u: _Update) -> bytes | list[Array]:
    if u.cached is not None:
        return [np.ravel(u.cached[p.name])[p.start : p.start + p.count] for p in span.pieces]
    assert u.obj is not None
    if u.where is None:  # laid out as ours: the range is one span of its bytes
        return await u.obj.read(u.base + span.begin, u.base + span.end)
    parts = []
    for p in span.pieces:
        begin = u.base + u.where[p.name].begin + p.start * p.dtype.itemsize
        parts.append(await u.obj.read(begin, begin + p.count * p.dtype.itemsize))
    return b"".join(parts)


async def _verify(updates: list[_Update], round_id: int, chunk_bytes: int) -> None:
    """Every update read hashes to the SHA-256 its verdict recorded (one laid out otherwise
    than ours was read out of order: it is hashed by a second, sequential pass)."""
    for u in updates:
        if u.obj is None:
            continue
        got = u.digest.hexdigest() if u.digest is not None else await u.obj.sha256(chunk_bytes)
        if got != u.record.sha256:
            raise _changed(
                u.record,
                f"SHA-256 no longer {u.record.sha256}; round {round_id} cannot be aggregated "
                "from it",
            )


def _changed(record: UpdateRecord, why: str) -> ChecksumMismatchError:
    return ChecksumMismatchError(
        f"{describe(record)}: object {record.s3_key!r} changed after the update was "
        f"accepted ({why})"
    )


def _write(fh: BinaryIO, data: bytes) -> None:
    fh.write(data)
