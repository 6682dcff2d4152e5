"""Asynchronous aggregation, state in and state out: the part every async strategy shares.

The server's async state (`AsyncState`), the staleness rules, and `absorb`, which checks
an update's staleness and shape and hands it to the task's async strategy
(`fedasync.core.strategies`: FedAsync in `strategies/fedasync.py`, FedBuff in
`strategies/fedbuff.py`). FedAsync's a_t = alpha * s(t - tau) is computed fresh from
alpha for every update (never compounded); FedBuff's w_i = 1 / sqrt(1 + staleness_i).

A buffer's weighted sum is an array the caller persists (S3) between invocations; the
counters live in `AsyncState`. Nothing here keeps state between calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedasync.core.codec import Array, Weights, check_compatible, spec_of
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError, SiloInBufferError, StaleUpdateError
from fedasync.core.noise import SecureGaussian
from fedasync.core.optimizers import OptimizerState
from fedasync.core.privacy import central_dp
from fedasync.core.strategies.registry import async_strategy


@dataclass(frozen=True)
class AsyncState:
    """What the server knows of an async task, as data (stored on the TASK item)."""

    version: int = 0
    absorbed: int = 0
    buffered: int = 0
    buffer_weight: float = 0.0
    # central DP with FedBuff: the silos in the buffer (each at most once) and their
    # largest weight, which sets the flush's sensitivity (`fedasync.core.sensitivity`)
    buffer_clients: tuple[str, ...] = ()
    buffer_max_weight: float = 0.0


@dataclass(frozen=True)
class Absorbed:
    """The outcome of absorbing one accepted update."""

    state: AsyncState
    staleness: int
    weight: float
    new_global: Weights | None = None
    buffer_sum: Weights | None = None
    # the server optimizer's state after this update's step (FedBuff with one; else None)
    server_state: OptimizerState | None = None

    @property
    def advanced(self) -> bool:
        return self.new_global is not None


def staleness_of(state: AsyncState, base_version: int, who: str) -> int:
    if base_version > state.version:
        raise SchemaError(
            f"{who} claims base version {base_version}, but the global model is at {state.version}",
            reason="future_version",
        )
    return state.version - base_version


def check_staleness(staleness: int, cfg: TaskConfig, who: str) -> None:
    if staleness > cfg.max_staleness:
        raise StaleUpdateError(
            f"{who} is stale: {staleness} > {cfg.max_staleness} (max_staleness); rejected"
        )


def fedasync_alpha(staleness: int, cfg: TaskConfig) -> float:
    return cfg.alpha * cfg.staleness.weight(staleness)


def fedbuff_weight(staleness: int) -> float:
    return 1.0 / math.sqrt(1.0 + staleness)


def mix(global_w: Mapping[str, Array], client_w: Mapping[str, Array], alpha_t: float) -> Weights:
    """(1 - a) x + a x_client in float64, emitted in the model's dtype."""
    out: Weights = {}
    for name, x in global_w.items():
        x64 = x.astype(np.float64)
        x64 *= 1.0 - alpha_t
        x64 += alpha_t * client_w[name].astype(np.float64)
        out[name] = as_dtype(x64, x.dtype)
    return out


def as_dtype(value: Array | np.generic, dtype: np.dtype[Any]) -> Array:
    """An ndarray of `dtype` and the value's shape: numpy arithmetic on 0-d arrays returns
    numpy scalars, which the codec (rightly) refuses as tensors. A cast that overflows
    gives Inf without a warning: `check_new_global` refuses it, with a reason."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value, dtype=dtype)


def after_refusal(state: AsyncState) -> AsyncState:
    """The state once a new global model was refused (`GlobalRefusedError`): the head stays
    and a FedBuff buffer is dropped (its deltas made the refused step; kept, they would
    refuse every step after it), so the next update starts a fresh buffer."""
    return replace(state, buffered=0, buffer_weight=0.0, buffer_clients=(), buffer_max_weight=0.0)


def absorb(
    state: AsyncState,
    cfg: TaskConfig,
    *,
    base_version: int,
    global_w: Mapping[str, Array],
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array] | None = None,
    buffer_sum: Mapping[str, Array] | None = None,
    server_state: OptimizerState | None = None,
    noise: SecureGaussian | None = None,
    who: str = "update",
    client_id: str | None = None,
) -> Absorbed:
    """Validate staleness and compatibility, then apply the task's async strategy
    (`fedasync.core.strategies`: FedAsync, FedBuff, or one registered since).

    Central DP with a buffer (FedBuff): a silo contributes at most once to a buffer;
    a second update of `client_id` before the flush is rejected (`SiloInBufferError`)."""
    staleness = staleness_of(state, base_version, who)
    check_staleness(staleness, cfg, who)
    check_compatible(client_w, spec_of(global_w), who)
    tracked = central_dp(cfg) and client_id is not None
    if tracked and client_id in state.buffer_clients:
        raise SiloInBufferError(
            f"{who} comes from a silo that already has an update in the FedBuff buffer being "
            f"filled ({state.buffered} of {cfg.buffer_size}); under central DP a silo "
            "contributes once per flush (its weight in the released sum at most 1): rejected, "
            "the silo is asked again after the flush"
        )
    out = async_strategy(cfg).absorb(
        state,
        cfg,
        global_w=global_w,
        client_w=client_w,
        base_w=base_w,
        buffer_sum=buffer_sum,
        server_state=server_state,
        noise=noise,
        staleness=staleness,
        who=who,
    )
    if not tracked or client_id is None:
        return out
    clients = (*state.buffer_clients, client_id) if out.state.buffered else ()
    return replace(out, state=replace(out.state, buffer_clients=clients))


def dp_releases(state: AsyncState, cfg: TaskConfig) -> int:
    """Central DP releases an async task made: FedBuff one per flush (each version),
    FedAsync one per absorbed update."""
    return state.version if cfg.aggregation == "fedbuff" else state.absorbed


def stop_reason(
    state: AsyncState,
    cfg: TaskConfig,
    *,
    elapsed_s: float | None = None,
    metric: float | None = None,
    release_limit: int | None = None,
) -> str | None:
    """Why an async task should stop now, or None to go on. `release_limit`: central DP's
    releases the budget buys (`dp_releases`)."""
    if state.version >= cfg.max_versions:
        return "max_versions"
    if release_limit is not None and dp_releases(state, cfg) >= release_limit:
        return "privacy_budget"
    if cfg.target_metric is not None and metric is not None and cfg.target_metric.reached(metric):
        return "target_metric"
    if elapsed_s is not None and elapsed_s >= cfg.deadline_s:
        return "deadline"
    return None
