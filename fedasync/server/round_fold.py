"""A closing round's accepted updates through the task's sync strategy.

A plain FedAvg round is streamed whole (`streamed_round`: ranges of every update folded
and written as they come). Any other round's updates are the ones validated at their
verdicts: from the cache (held here, so no eviction can take them midway), or read again
by ranged reads chunk by chunk, hashed as they arrive and checked against the SHA-256
their verdict recorded (an object rewritten since must not slip into the global model):
into FedAvg's sum (`add_chunk`) when nothing needs the update whole, else spilled to
local disk as the chunks arrive and mapped back (`fedasync.server.spill`), which is how a
strategy that needs every update at once holds them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fedasync import limits
from fedasync.aws.ranged import stream_tensors
from fedasync.core import codec, keys
from fedasync.core.codec import Array, Weights, check_compatible
from fedasync.core.decisions import describe, load_payload
from fedasync.core.errors import (
    ChecksumMismatchError,
    FedAsyncError,
    GlobalRefusedError,
    SchemaError,
)
from fedasync.core.fedavg import FedAvgAccumulator
from fedasync.core.messages import UpdateRecord
from fedasync.core.noise import SecureGaussian
from fedasync.core.optimizers import state_from_tensors, state_to_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.screening import clip_to_base
from fedasync.core.strategies import sync_strategy
from fedasync.core.strategies.base import Fold, details_of
from fedasync.core.strategies.central_dp import CentralDpFold
from fedasync.core.streamfold import streamable
from fedasync.server import refused, streamed_round
from fedasync.server.cache import CACHE
from fedasync.server.spill import Spill, spill_root
from fedasync.server.store import ServerStore
from fedasync.server.stored import load_model, put_model
from fedasync.server.task_view import TaskView


async def fold_round(
    store: ServerStore, view: TaskView, round_id: int, records: list[UpdateRecord]
) -> tuple[Weights, dict[str, Any]]:
    """The round's candidate model and what the strategy recorded about it."""
    strategy = sync_strategy(view.cfg)
    who = f"round {round_id} of task {view.task_name!r}"
    privacy = view.cfg.privacy
    with Spill(spill_root()) as spill:
        fold: Fold
        if privacy is not None and privacy.mode == "central":
            key = keys.global_key(view.task_name, round_id)
            global_w = await load_model(store, key, view.head_sha256, who)
            # a fresh OS-random key per release, built here at the edge (never logged)
            fold = CentralDpFold(global_w, view.spec, privacy, SecureGaussian(), who=who)
        else:
            fold = strategy.fold(view.spec, who=who, keep=spill)
        cached = {record.sha256: CACHE.get(record.sha256) for record in records}
        bound = view.cfg.clip_update_norm  # each delta clipped to it, against the round's model
        key = keys.global_key(view.task_name, round_id)
        delta = view.cfg.update_encoding is not None  # its updates read as base + delta
        base = await load_model(store, key, view.head_sha256, who) if bound or delta else None
        for record in records:
            weights: Mapping[str, Array] | None = cached[record.sha256]
            if weights is None and delta and base is not None:  # read whole, as at its verdict
                weights = await _delta_local(store, view, record, round_id, base)
            if weights is None and bound is None and isinstance(fold, FedAvgAccumulator):
                await _fold_streamed(store, view, record, round_id, fold)  # add_chunk
                continue
            if weights is None:  # spilled as it streams in, then mapped
                async with _streamed(store, view, record, round_id) as chunks:
                    weights = await spill.stream_in(chunks, view.spec)
            if bound is not None and base is not None:
                weights = clip_to_base(weights, base, bound)
            fold.add(weights, record.num_examples, who=record.sk)
            del weights
        candidate = fold.result()
        return candidate, details_of(fold)


@contextlib.asynccontextmanager
async def _streamed(
    store: ServerStore, view: TaskView, record: UpdateRecord, round_id: int
) -> AsyncIterator[AsyncIterator[tuple[str, int, Array]]]:
    """The accepted update's chunks by ranged reads, checked against its verdict's SHA-256
    once the last is out: bytes that are not the ones accepted stop the round's close."""
    chunks = stream_tensors(
        store.objects, record.s3_key, sha256=record.sha256, spec=view.spec,
        max_bytes=view.cfg.max_model_bytes, named_by_silo=True, who=describe(record),
        chunk_bytes=limits.AGGREGATE_SIZING.chunk_bytes, ahead=limits.AGGREGATE_SIZING.read_ahead,
    )  # fmt: skip
    try:
        async with contextlib.aclosing(chunks):
            yield chunks
    except (ChecksumMismatchError, SchemaError) as exc:  # its header was checked at its verdict
        raise ChecksumMismatchError(
            f"{describe(record)}: object {record.s3_key!r} changed after the update was "
            f"accepted ({exc.message}); round {round_id} cannot be aggregated from it"
        ) from exc


async def _delta_local(
    store: ServerStore, view: TaskView, record: UpdateRecord, round_id: int, base: Weights
) -> Weights:
    """An accepted update of a delta task (`update_encoding`) read whole and checked again
    as at its verdict, as the local model base + delta (`fedasync.core.deltas`)."""
    data = await store.get_object(
        record.s3_key, max_bytes=view.cfg.max_model_bytes, named_by_silo=True
    )
    try:
        return load_payload(data, record, view.spec, view.cfg, base=base)
    except FedAsyncError as exc:  # its verdict accepted other bytes
        raise ChecksumMismatchError(
            f"{describe(record)}: object {record.s3_key!r} changed after the update was "
            f"accepted ({exc.message}); round {round_id} cannot be aggregated from it"
        ) from exc


async def _fold_streamed(
    store: ServerStore, view: TaskView, record: UpdateRecord, round_id: int, fold: FedAvgAccumulator
) -> None:
    async with _streamed(store, view, record, round_id) as chunks:
        async for name, start, values in chunks:
            await asyncio.to_thread(
                fold.add_chunk, name, start, values, record.num_examples, who=record.sk
            )


async def new_version_of(
    store: ServerStore, view: TaskView, round_id: int, records: list[UpdateRecord]
) -> tuple[str, int, dict[str, Any], dict[str, Any]] | GlobalRefusedError:
    """Version round_id + 1 made of the round's accepted updates and stored: its SHA-256,
    its size, what the strategy and the server step recorded; or the refusal of it
    (nothing stored, the head stays). A plain FedAvg round is streamed
    (`streamed_round`); any other holds its updates through the strategy's fold."""
    if streamable(view.cfg):
        made = await streamed_round.close_streamed(store, view, round_id, records)
        return made if isinstance(made, GlobalRefusedError) else (*made, {}, {})
    candidate, details = await fold_round(store, view, round_id, records)
    members = len(records)
    refusal = await refused.check_round(store, view, round_id, members, candidate)
    if refusal is not None:
        return refusal
    candidate, stepped = await server_step(store, view, round_id, candidate)
    refusal = refused.check_stepped(view, round_id, candidate)
    if refusal is not None:
        return refusal
    blob, sha = await store_version(store, view, round_id + 1, codec.encode(candidate))
    return sha, len(blob), details, stepped


async def server_step(
    store: ServerStore, view: TaskView, round_id: int, aggregate: Weights
) -> tuple[Weights, dict[str, Any]]:
    """The task's server optimizer applied to the round's aggregate (Reddi et al. 2021):
    the new global model, and what the round's result and the TASK item record (the
    SHA-256 of the optimizer state it stored for version round_id + 1). Without one, the
    aggregate is the new global model."""
    opt = view.cfg.server_optimizer
    if opt is None:
        return aggregate, {}
    name, who = view.task_name, f"round {round_id} of task {view.task_name!r}"
    global_w = await load_model(store, keys.global_key(name, round_id), view.head_sha256, who)
    state = None
    if view.optimizer_sha256 is not None:
        key = keys.optimizer_key(name, round_id)
        state = state_from_tensors(await load_model(store, key, view.optimizer_sha256, who))
    new_global, new_state = opt.step(global_w, aggregate, state)
    sha, _ = await put_model(
        store, keys.optimizer_key(name, round_id + 1), state_to_tensors(new_state)
    )
    return new_global, {"optimizer_sha256": sha}


async def store_version(
    store: ServerStore, view: TaskView, version: int, blob: bytes
) -> tuple[bytes, str]:
    """Write the round's new version; the bytes and SHA-256 to commit.

    A deterministic round (every strategy without central DP) gives the same bytes on
    every try: they are written, whatever is there. A central DP release is not repeated
    by a retry (fresh noise), so it is written once (S3's conditional write) and a retry
    or a concurrent close commits the bytes the first try wrote, after checking they are
    a model of the task's spec; one release is made of the round, whichever try wins."""
    key, sha = keys.global_key(view.task_name, version), codec.sha256_bytes(blob)
    if not central_dp(view.cfg):
        await store.put_object(key, blob, sha)
        return blob, sha
    stored, stored_sha = await store.put_object_once(key, blob, sha)
    if stored_sha != sha:
        check_compatible(codec.decode(stored, who=key), view.spec, f"stored release {key!r}")
    return stored, stored_sha
