"""Async mode: open the task, absorb each update (FedAsync / FedBuff), stop when done."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import numpy as np
import structlog

from fedasync.core import codec, keys
from fedasync.core.asyncagg import Absorbed, absorb, stop_reason
from fedasync.core.codec import Weights
from fedasync.core.decisions import check_running, describe, load_payload, metric_for_stop
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.messages import UpdateRecord
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def open_task(store: ServerStore, view: TaskView, token: str) -> None:
    """Keep the completion token server-side, then announce the current global model."""
    op = store.update_op(
        view.task_name,
        keys.TASK_SK,
        {"token": token, "started_at": time.time()},
        condition="attribute_not_exists(#finished)",
    )
    if not await store.update(op):
        log.info("task.open_ignored", reason="finished")
        return
    await store.publish(view.notice(view.head_version), view.cfg.clients)
    log.info("task.opened", version=view.head_version)


class ModelCache:
    """Decoded models by SHA-256, so a warm container skips re-reading what it just wrote.

    Only a hint: the state lives in S3 and DynamoDB, a miss reads S3 as a cold container
    would, and an entry is used only for the SHA-256 the TASK item records (or that a
    committed version recorded), so a hit is the same bytes a read would verify. Arrays
    are read-only: nothing downstream may change a cached model in place.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, Weights] = OrderedDict()
        self._versions: dict[tuple[str, int], str] = {}

    def get(self, sha: str | None) -> Weights | None:
        if sha is None or sha not in self._models:
            return None
        self._models.move_to_end(sha)
        return self._models[sha]

    def put(self, sha: str, weights: Weights) -> None:
        size = codec.total_bytes(weights.values())
        if size > self.max_bytes:
            return
        for array in weights.values():
            array.setflags(write=False)
        self._models[sha] = weights
        self._models.move_to_end(sha)
        while sum(codec.total_bytes(w.values()) for w in self._models.values()) > self.max_bytes:
            self._models.popitem(last=False)

    def version_sha(self, task_name: str, version: int) -> str | None:
        return self._versions.get((task_name, version))

    def committed(self, task_name: str, version: int, sha: str) -> None:
        """Version `version` of `task_name` is `sha` (a committed head: immutable from now on)."""
        self._versions[(task_name, version)] = sha

    def clear(self) -> None:
        self._models.clear()
        self._versions.clear()


CACHE = ModelCache()


async def _model(store: ServerStore, key: str, sha: str | None, who: str) -> Weights:
    cached = CACHE.get(sha)
    if cached is not None:
        return cached
    data = await store.get_object(key)
    if sha is not None and codec.sha256_bytes(data) != sha:
        raise ChecksumMismatchError(
            f"{who}: stored object {key!r} does not match its recorded SHA-256"
        )
    weights = codec.decode(data, who=key)
    if sha is not None:
        CACHE.put(sha, weights)
    return weights


async def absorb_update(
    store: ServerStore, view: TaskView, record: UpdateRecord, item: dict[str, Any]
) -> dict[str, Any]:
    """Validate, apply, commit (task head + verdict in one transaction); the decided item."""
    cfg, who = view.cfg, describe(record)
    check_running(view.status, view.finished, record)
    needs_base = cfg.aggregation == "fedbuff" or cfg.max_update_norm is not None
    base_w = None
    if needs_base and record.base_version <= view.head_version:
        base_sha = (
            view.head_sha256
            if record.base_version == view.head_version
            else CACHE.version_sha(cfg.task_name, record.base_version)
        )
        base_w = await _model(
            store, keys.global_key(cfg.task_name, record.base_version), base_sha, who
        )
    data = await store.get_object(record.s3_key, max_bytes=cfg.max_model_bytes)
    staleness = view.head_version - record.base_version
    if staleness > cfg.max_staleness or staleness < 0:
        base_w = None  # absorb() rejects it with the precise reason; skip the heavy checks
    client_w = load_payload(
        data, record, view.spec, cfg, base=base_w if cfg.max_update_norm else None
    )
    global_w = await _model(
        store, keys.global_key(cfg.task_name, view.head_version), view.head_sha256, who
    )
    buffer_sum = None
    if view.state.buffered:
        buffer_sum = await _model(
            store, keys.buffer_key(cfg.task_name, view.state.absorbed), view.buffer_sha256, who
        )
    out = absorb(
        view.state,
        cfg,
        base_version=record.base_version,
        global_w=global_w,
        client_w=client_w,
        base_w=base_w,
        buffer_sum=buffer_sum,
        who=who,
    )
    return await _commit(store, view, record, item, out)


async def _commit(
    store: ServerStore, view: TaskView, record: UpdateRecord, item: dict[str, Any], out: Absorbed
) -> dict[str, Any]:
    name = view.task_name
    task_values: dict[str, Any] = {
        "absorbed": out.state.absorbed,
        "buffered": out.state.buffered,
        "buffer_weight": out.state.buffer_weight,
        "head_version": out.state.version,
    }
    verdict: dict[str, Any] = {
        "verdict": "accepted",
        "seq": out.state.absorbed,
        "staleness": out.staleness,
        "weight": out.weight,
        "applied_version": out.state.version,
        "decided_at": time.time(),
    }
    new_head: str | None = None
    cache: list[tuple[str, Weights]] = []
    if out.new_global is not None:
        blob = codec.encode(out.new_global)
        new_head = codec.sha256_bytes(blob)
        await store.put_object(keys.global_key(name, out.state.version), blob, new_head)
        task_values.update(head_sha256=new_head, head_size=len(blob))
        verdict["version_sha256"] = new_head  # the ledger's record of the version this produced
        cache.append((new_head, out.new_global))
    if out.buffer_sum is not None:
        buffer_sum = {k: np.asarray(v, dtype=np.float64) for k, v in out.buffer_sum.items()}
        blob = codec.encode(buffer_sum)
        sha = codec.sha256_bytes(blob)
        await store.put_object(keys.buffer_key(name, out.state.absorbed), blob, sha)
        task_values["buffer_sha256"] = sha
        cache.append((sha, buffer_sum))
    if view.cfg.target_metric is not None and view.cfg.target_metric.name in record.metrics:
        task_values["latest_metrics"] = {
            **view.latest_metrics,
            record.client_id: record.metrics[view.cfg.target_metric.name],
        }
    committed = await store.transact(
        [
            store.update_op(
                name,
                keys.TASK_SK,
                task_values,
                condition="#absorbed = :expected AND attribute_not_exists(#finished)",
                condition_values={":expected": view.state.absorbed},
            ),
            store.update_op(
                name, str(item["sk"]), verdict, condition="attribute_not_exists(#verdict)"
            ),
        ]
    )
    if not committed:
        # Another try committed first, or the task moved on: the stream redelivers and the
        # next attempt sees the verdict (done) or the new head (recomputes against it).
        raise RuntimeError(f"{describe(record)}: commit lost a race with another writer; retrying")
    for sha, weights in cache:
        CACHE.put(sha, weights)
    CACHE.committed(name, view.head_version, view.head_sha256)
    if new_head is not None:
        CACHE.committed(name, out.state.version, new_head)
    log.info(
        "update.accepted",
        staleness=out.staleness,
        weight=round(out.weight, 6),
        version=out.state.version,
        advanced=out.advanced,
        seq=out.state.absorbed,
    )
    return {**item, **verdict}


async def after_accept(
    store: ServerStore, task_name: str, item: dict[str, Any], task: dict[str, Any] | None = None
) -> None:
    """Effects after an accepted update; safe to repeat (a retry after a crash runs them again).

    `task` is the TASK item if the caller read it after the verdict (else it is read here).
    """
    view = TaskView.from_item(task_name, task or await store.get_task(task_name))
    if view.finished:
        return
    effects: list[Awaitable[object]] = []
    if view.token:
        effects.append(store.send_heartbeat(view.token))
    if (
        int(item.get("applied_version", -1)) == view.head_version
        and int(item.get("seq", -1)) == view.state.absorbed
    ):
        effects.append(store.publish(view.notice(view.head_version), view.cfg.clients))
    await asyncio.gather(*effects)
    reason = stop_reason(
        view.state, view.cfg, metric=metric_for_stop(view.cfg, view.latest_metrics)
    )
    if reason is not None:
        await finish_task(store, task_name, reason, token=view.token)
