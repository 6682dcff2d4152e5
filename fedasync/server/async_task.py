"""Async mode: absorb each update (FedAsync / FedBuff) into the head, committed once per
invocation; the effects that follow are in `async_effects.py`."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import structlog

from fedasync.core import codec, keys
from fedasync.core.asyncagg import Absorbed, absorb, stop_reason
from fedasync.core.decisions import (
    check_running,
    check_sender,
    describe,
    load_payload,
    parse_update_item,
)
from fedasync.core.errors import FedAsyncError, GlobalRefusedError
from fedasync.core.messages import UpdateRecord
from fedasync.core.noise import SecureGaussian
from fedasync.core.optimizers import state_to_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.screening import RECENT_NORMS, base_needed, next_window, screen
from fedasync.core.target import target_value, with_report
from fedasync.core.verdicts import decided_on_record
from fedasync.server import refused
from fedasync.server.async_effects import after_accept
from fedasync.server.async_head import Head, base_model, dp_values
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.stored import load_model, put_model, put_version
from fedasync.server.task_view import WAITING, TaskView

log = structlog.get_logger()
# DynamoDB takes at most 100 items per transaction (the TASK item + one verdict each)
MAX_RUN = 99


async def _absorb_one(
    store: ServerStore, head: Head, record: UpdateRecord
) -> tuple[Absorbed, float | None]:
    """Validate and screen one update against the head and absorb it (no writes yet); the
    outcome and the delta norm the outlier filter judged (None without one)."""
    view, who = head.view, describe(record)
    cfg = view.cfg
    check_running(view.status, view.finished, record)
    base_w = None
    if base_needed(cfg) and record.base_version <= head.state.version:
        base_w = await base_model(store, head, record.base_version, who)
    data = await store.get_object(record.s3_key, max_bytes=cfg.max_model_bytes, named_by_silo=True)
    staleness = head.state.version - record.base_version
    if staleness > cfg.max_staleness or staleness < 0:
        base_w = None  # absorb() rejects it with the precise reason; skip the heavy checks
    client_w = load_payload(
        data, record, view.spec, cfg, base=base_w if cfg.max_update_norm else None
    )
    screened = screen(client_w, base_w, cfg, head.recent_norms, who)
    if head.global_w is None:
        key = keys.global_key(cfg.task_name, head.state.version)
        head.global_w = await load_model(store, key, head.head_sha, who)
    if head.state.buffered and head.buffer_sum is None:
        key = keys.buffer_key(cfg.task_name, head.state.absorbed)
        head.buffer_sum = await load_model(store, key, head.buffer_sha, who)
    out = absorb(
        head.state,
        cfg,
        base_version=record.base_version,
        global_w=head.global_w,
        client_w=screened.weights,
        base_w=base_w,
        buffer_sum=head.buffer_sum if head.state.buffered else None,
        server_state=(
            await head.optimizer_state(store, who) if cfg.server_optimizer is not None else None
        ),
        # central DP: a fresh OS-random key per release, built here at the edge
        noise=SecureGaussian() if central_dp(cfg) else None,
        who=who,
        client_id=record.client_id,
    )
    return out, screened.norm


async def _advance(
    store: ServerStore, head: Head, record: UpdateRecord, out: Absorbed, norm: float | None
) -> dict[str, Any]:
    """Write what the update produced (objects are immutable per version/seq); its verdict."""
    name, cfg = head.view.task_name, head.view.cfg
    verdict: dict[str, Any] = {
        "verdict": "accepted",
        "seq": out.state.absorbed,
        "staleness": out.staleness,
        "weight": out.weight,
        "applied_version": out.state.version,
        "decided_at": time.time(),
    }
    if out.new_global is not None:
        key = keys.global_key(name, out.state.version)
        produced, sha, size = await put_version(store, key, out.new_global, once=central_dp(cfg))
        head.values.update(head_sha256=sha, head_size=size)
        verdict["version_sha256"] = sha  # the ledger's record of the version this produced
        head.fresh.append((sha, produced))
        head.produced[out.state.version] = produced
        head.produced_sha[out.state.version] = sha
        head.global_w, head.head_sha, head.buffer_sum = produced, sha, None
    if out.server_state is not None:
        key = keys.optimizer_key(name, out.state.version)
        opt_sha, _ = await put_model(store, key, state_to_tensors(out.server_state))
        head.server_state = out.server_state
        head.values["optimizer_sha256"] = opt_sha
        verdict["optimizer_sha256"] = opt_sha
    if out.buffer_sum is not None:
        # written once, at the commit: only the committed seq's buffer is ever read
        head.buffer_sum = {k: np.asarray(v, dtype=np.float64) for k, v in out.buffer_sum.items()}
        head.buffer_sha = None
    reports = with_report(cfg, head.latest, record.client_id, record.metrics, record.num_examples)
    if reports is not None:
        head.latest = reports
        head.values["latest_metrics"] = {c: r.item() for c, r in reports.items()}
    if cfg.outlier_filter is not None:
        head.recent_norms = next_window(head.recent_norms, norm, cfg)
        head.values[RECENT_NORMS] = list(head.recent_norms)
    head.values.update(dp_values(head, head.state, out, record.client_id))
    head.state = out.state
    head.values.update(
        absorbed=out.state.absorbed,
        buffered=out.state.buffered,
        buffer_weight=out.state.buffer_weight,
        head_version=out.state.version,
    )
    return verdict


async def _commit(
    store: ServerStore, head: Head, decided: list[tuple[UpdateRecord, dict[str, Any], Absorbed]]
) -> bool:
    """TASK counters and every verdict in one conditional transaction (all or nothing)."""
    view = head.view
    if head.state.buffered and head.buffer_sha is None and head.buffer_sum is not None:
        blob = codec.encode(head.buffer_sum)
        head.buffer_sha = codec.sha256_bytes(blob)
        key = keys.buffer_key(view.task_name, head.state.absorbed)
        await store.put_object(key, blob, head.buffer_sha)
        head.values["buffer_sha256"] = head.buffer_sha
        head.fresh.append((head.buffer_sha, head.buffer_sum))
    committed = await store.transact(
        [
            store.update_op(
                view.task_name,
                keys.TASK_SK,
                head.values,
                condition="#absorbed = :expected AND attribute_not_exists(#finished)",
                condition_values={":expected": view.state.absorbed},
                # accepted: no longer waiting for a go-ahead (see `after_reject`)
                delete_from_sets={WAITING: view.waiting & {r.client_id for r, _, _ in decided}},
            ),
            *(
                store.update_op(
                    view.task_name,
                    record.sk,
                    {**verdict, **decided_on_record(record, None)},
                    condition="attribute_not_exists(#verdict)",
                )
                for record, verdict, _ in decided
            ),
        ]
    )
    if not committed:
        return False
    for sha, weights in head.fresh:
        CACHE.put(sha, weights)
    CACHE.committed(view.task_name, view.head_version, view.head_sha256)
    for version, sha in head.produced_sha.items():
        CACHE.committed(view.task_name, version, sha)
    for record, _, out in decided:
        log.info(
            "update.accepted",
            task_name=view.task_name,
            client_id=record.client_id,
            sk=record.sk,
            staleness=out.staleness,
            weight=round(out.weight, 6),
            version=out.state.version,
            advanced=out.advanced,
            seq=out.state.absorbed,
        )
    return True


async def absorb_update(
    store: ServerStore, view: TaskView, record: UpdateRecord, item: dict[str, Any]
) -> dict[str, Any]:
    """Validate, apply, commit (task head + verdict in one transaction); the decided item."""
    head = Head.of(view)
    try:
        out, norm = await _absorb_one(store, head, record)
    except GlobalRefusedError as exc:  # the head stays: the update is rejected with the cause
        return await refused.refuse_async(store, view, record, item, exc)
    verdict = await _advance(store, head, record, out, norm)
    if not await _commit(store, head, [(record, verdict, out)]):
        # Another try committed first, or the task moved on: the stream redelivers and the
        # next attempt sees the verdict (done) or the new head (recomputes against it).
        raise RuntimeError(f"{describe(record)}: commit lost a race with another writer; retrying")
    return {**item, **verdict}


async def absorb_run(store: ServerStore, view: TaskView, sks: list[str]) -> int:
    """Absorb a run of one async task's new update records (stream order) with one commit.

    Byte for byte what one invocation per record would do, with one TASK read (`view`,
    of a running task: `updates.decide_run` checks that and the run's length), one
    transaction and one round of effects for the run. Stops before the first record that
    is decided already, would be rejected, or comes after a stop condition; returns how
    many it decided (a prefix: the caller hands the rest to `on_update`, one by one).
    """
    task_name = view.task_name
    if view.cfg.mode != "async":
        return 0
    head, decided = Head.of(view), []
    last: dict[str, Any] = {}
    for update in await store.get_items(task_name, sks):
        if update is None or update.get("verdict"):
            break
        try:
            record = parse_update_item(update)
            check_sender(record, view.cfg)
            out, norm = await _absorb_one(store, head, record)
        except FedAsyncError:
            break  # the one-by-one path records the rejection with its reason
        verdict = await _advance(store, head, record, out, norm)
        decided.append((record, verdict, out))
        last = {**update, **verdict}
        metric = target_value(view.cfg, head.latest)
        limit = view.dp_release_limit
        if stop_reason(head.state, view.cfg, metric=metric, release_limit=limit) is not None:
            break
    if not decided or not await _commit(store, head, decided):
        return 0
    log.info("update.run_committed", task_name=task_name, updates=len(decided))
    submitters = {record.client_id for record, _, _ in decided}
    after = replace(
        view,
        head_version=head.state.version,
        head_sha256=head.head_sha,
        head_size=int(head.values.get("head_size", view.head_size)),
        state=head.state,
        latest_metrics=head.latest,
        waiting=view.waiting - submitters,
        recent_norms=head.recent_norms,
        dp_flushed=frozenset(head.flushed),
    )
    await after_accept(store, task_name, last, view=after, submitters=submitters)
    return len(decided)
