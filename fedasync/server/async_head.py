"""The async head as one invocation advances it (`async_plan`), the facts a batch is
decided on (`load_facts`: every read of the decision, done before it), and what central
DP records of each accepted update on the TASK item."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedasync.core import keys
from fedasync.core.asyncagg import Absorbed, AsyncState, dp_releases
from fedasync.core.codec import Weights
from fedasync.core.decisions import check_running, check_sender, describe, parse_update_item
from fedasync.core.errors import FedAsyncError
from fedasync.core.items import task as t
from fedasync.core.messages import UpdateRecord
from fedasync.core.noise import SecureGaussian
from fedasync.core.optimizers import OptimizerState, state_from_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.screening import base_needed
from fedasync.core.target import Report
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.stored import load_model
from fedasync.server.task_view import TaskView

IN_FLIGHT = 4  # object reads of one batch at a time


@dataclass
class Head:
    """The task's async head as one invocation advances it; committed in one transaction."""

    view: TaskView
    state: AsyncState
    head_sha: str
    buffer_sha: str | None
    latest: dict[str, Report]
    values: dict[str, Any] = field(default_factory=dict)
    produced: dict[int, Weights] = field(default_factory=dict)
    produced_sha: dict[int, str] = field(default_factory=dict)
    fresh: list[tuple[str, Weights]] = field(default_factory=list)
    global_w: Weights | None = None
    buffer_sum: Weights | None = None
    server_state: OptimizerState | None = None  # the server optimizer's, after the head's step
    recent_norms: tuple[float, ...] = ()  # the outlier filter's window (accepted, oldest first)
    flushed: tuple[str, ...] = ()  # central DP, FedBuff: silos of the buffers flushed here

    @classmethod
    def of(cls, view: TaskView) -> Head:
        state, latest, recent = view.state, view.latest_metrics, view.recent_norms
        return cls(view, state, view.head_sha256, view.buffer_sha256, latest, recent_norms=recent)


@dataclass(frozen=True)
class Submission:
    """One update of the batch as read: its record, object and base model, or the error."""

    sk: str
    item: dict[str, Any]
    record: UpdateRecord | None = None
    data: bytes | None = None
    base: Weights | None = None
    error: FedAsyncError | None = None


@dataclass(frozen=True)
class Facts:
    view: TaskView
    batch: tuple[Submission, ...]
    global_w: Weights
    buffer_sum: Weights | None
    server_state: OptimizerState | None
    now: float
    # central DP: a fresh OS-random key per release, built at the edge
    noise: Callable[[], SecureGaussian | None] = lambda: None
    # central DP: versions a previous try released (write-once: that release is the version)
    releases: Mapping[int, Weights] = field(default_factory=dict)


def dp_values(head: Head, before: AsyncState, out: Absorbed, client_id: str) -> dict[str, Any]:
    """The TASK item's central-DP counters after `out`: the releases (FedBuff: flushes,
    FedAsync: absorbed updates), and for FedBuff the buffer's silos (the per-silo cap,
    enforced across invocations and re-derived by replay), its largest weight (the
    flush's sensitivity), and the silos of the buffers this invocation flushed (owed a
    go-ahead: `async_effects.after_accept`). Counts and public ids only, never noise."""
    cfg = head.view.cfg
    if not central_dp(cfg):
        return {}
    values = t.dp_releases(dp_releases(out.state, cfg))
    if cfg.aggregation != "fedbuff":
        return values
    if out.advanced:
        head.flushed = (*head.flushed, *before.buffer_clients, client_id)
    values.update(t.dp_buffer(out.state.buffer_clients, out.state.buffer_max_weight))
    values.update(t.dp_flushed(sorted(set(head.flushed))))
    return values


async def load_facts(
    store: ServerStore, view: TaskView, batch: list[tuple[str, dict[str, Any]]]
) -> Facts:
    """Everything `async_plan.plan` decides `batch` on, read once: the head's model, FedBuff
    buffer and optimizer state, and per submission its record, object and base model (a
    few in flight), or the error reading it raised (a rejection of that update only)."""
    cfg, name = view.cfg, view.task_name
    who = f"task {name!r}"
    global_w = await load_model(
        store, keys.global_key(name, view.head_version), view.head_sha256, who
    )
    buffer_sum = None
    if view.state.buffered:
        key = keys.buffer_key(name, view.state.absorbed)
        buffer_sum = await load_model(store, key, view.buffer_sha256, who)
    server_state = None
    if cfg.server_optimizer is not None and view.optimizer_sha256 is not None:
        key = keys.optimizer_key(name, view.head_version)
        server_state = state_from_tensors(await load_model(store, key, view.optimizer_sha256, who))
    gate = asyncio.Semaphore(IN_FLIGHT)
    subs = await asyncio.gather(*(_submission(store, view, sk, item, gate) for sk, item in batch))
    return Facts(
        view,
        tuple(subs),
        global_w,
        buffer_sum,
        server_state,
        now=time.time(),
        # central DP: a fresh OS-random key per release, built here at the edge
        noise=SecureGaussian if central_dp(cfg) else _no_noise,
    )


async def _submission(
    store: ServerStore, view: TaskView, sk: str, item: dict[str, Any], gate: asyncio.Semaphore
) -> Submission:
    record = None
    try:
        record = parse_update_item(item)
        check_sender(record, view.cfg)
        check_running(view.status, view.finished, record)
        async with gate:
            base = await _base_of(store, view, record)
            data = await store.get_object(
                record.s3_key, max_bytes=view.cfg.max_model_bytes, named_by_silo=True
            )
    except FedAsyncError as exc:
        return Submission(sk, item, record, error=exc)
    return Submission(sk, item, record, data=data, base=base)


async def _base_of(store: ServerStore, view: TaskView, record: UpdateRecord) -> Weights | None:
    """The stored model an update was trained on, when its checks need it; a version the
    batch itself makes is the plan's (`Head.produced`), one too stale is rejected unread."""
    staleness = view.head_version - record.base_version
    if not base_needed(view.cfg) or staleness < 0 or staleness > view.cfg.max_staleness:
        return None
    name, version = view.task_name, record.base_version
    sha = view.head_sha256 if version == view.head_version else CACHE.version_sha(name, version)
    return await load_model(store, keys.global_key(name, version), sha, describe(record))


def _no_noise() -> None:
    return None
