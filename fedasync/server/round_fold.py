"""A closing round's accepted updates through the task's sync strategy.

The updates are the ones validated at their verdicts: from the cache (held here, so no
eviction can take them midway), or read again, a few ahead, and re-checked against the
SHA-256 their verdict recorded (an object rewritten since must not slip into the global
model). A strategy that needs every update at once holds them spilled to local disk
(`fedasync.server.spill`)."""

from __future__ import annotations

import contextlib
from typing import Any

from fedasync.core import codec, keys
from fedasync.core.codec import Weights
from fedasync.core.decisions import describe
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.messages import UpdateRecord
from fedasync.core.optimizers import state_from_tensors, state_to_tensors
from fedasync.core.screening import clip_to_base
from fedasync.core.strategies import sync_strategy
from fedasync.core.strategies.base import details_of
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
    with Spill(spill_root()) as spill:
        fold = strategy.fold(
            view.spec, who=f"round {round_id} of task {view.task_name!r}", keep=spill
        )
        cached = {record.sha256: CACHE.get(record.sha256) for record in records}
        bound, who = view.cfg.clip_update_norm, f"round {round_id} of task {view.task_name!r}"
        key = keys.global_key(view.task_name, round_id)  # clip_update_norm: each delta to it
        base = await load_model(store, key, view.head_sha256, who) if bound else None
        missing = [record for record in records if cached[record.sha256] is None]
        objects = store.iter_objects(
            [record.s3_key for record in missing],
            max_bytes=view.cfg.max_model_bytes,
            named_by_silo=True,
        )
        async with contextlib.aclosing(objects):
            for record in records:
                weights = cached[record.sha256]
                if weights is None:
                    data = await anext(objects)
                    if codec.sha256_bytes(data) != record.sha256:
                        raise ChecksumMismatchError(
                            f"{describe(record)}: object {record.s3_key!r} changed after the "
                            f"update was accepted (SHA-256 no longer {record.sha256}); round "
                            f"{round_id} cannot be aggregated from it"
                        )
                    weights = codec.decode(data, who=record.sk)
                    del data
                if bound is not None and base is not None:
                    weights = clip_to_base(weights, base, bound)
                fold.add(weights, record.num_examples, who=record.sk)
                del weights
        candidate = fold.result()
        return candidate, details_of(fold)


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
