"""The async head as one invocation advances it (`async_task`), and what central DP
records of each accepted update on the TASK item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedasync.core import keys
from fedasync.core.asyncagg import Absorbed, AsyncState, dp_releases
from fedasync.core.codec import Weights
from fedasync.core.optimizers import OptimizerState, state_from_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.target import Report
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.stored import load_model
from fedasync.server.task_view import TaskView


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
    server_state: OptimizerState | None = None  # read when a server optimizer steps
    recent_norms: tuple[float, ...] = ()  # the outlier filter's window (accepted, oldest first)
    flushed: tuple[str, ...] = ()  # central DP, FedBuff: silos of the buffers flushed here

    @classmethod
    def of(cls, view: TaskView) -> Head:
        state, latest, recent = view.state, view.latest_metrics, view.recent_norms
        return cls(view, state, view.head_sha256, view.buffer_sha256, latest, recent_norms=recent)

    async def optimizer_state(self, store: ServerStore, who: str) -> OptimizerState | None:
        """The server optimizer's state after the head's step (None before the first)."""
        sha = self.values.get("optimizer_sha256", self.view.optimizer_sha256)
        if self.server_state is None and sha is not None:
            key = keys.optimizer_key(self.view.task_name, self.state.version)
            self.server_state = state_from_tensors(await load_model(store, key, sha, who))
        return self.server_state


async def base_model(store: ServerStore, head: Head, version: int, who: str) -> Weights:
    if version in head.produced:
        return head.produced[version]
    name = head.view.task_name
    sha = (
        head.view.head_sha256
        if version == head.view.head_version
        else CACHE.version_sha(name, version)
    )
    return await load_model(store, keys.global_key(name, version), sha, who)


def dp_values(head: Head, before: AsyncState, out: Absorbed, client_id: str) -> dict[str, Any]:
    """The TASK item's central-DP counters after `out`: the releases (FedBuff: flushes,
    FedAsync: absorbed updates), and for FedBuff the buffer's silos (the per-silo cap,
    enforced across invocations and re-derived by replay), its largest weight (the
    flush's sensitivity), and the silos of the buffers this invocation flushed (owed a
    go-ahead: `async_effects.after_accept`). Counts and public ids only, never noise."""
    cfg = head.view.cfg
    if not central_dp(cfg):
        return {}
    values: dict[str, Any] = {"dp_releases": dp_releases(out.state, cfg)}
    if cfg.aggregation != "fedbuff":
        return values
    if out.advanced:
        head.flushed = (*head.flushed, *before.buffer_clients, client_id)
    values.update(
        dp_buffer_clients=list(out.state.buffer_clients),
        dp_buffer_max_weight=out.state.buffer_max_weight,
        dp_flushed_clients=sorted(set(head.flushed)),
    )
    return values
