"""Asynchronous aggregation, state in and state out: FedAsync and FedBuff.

FedAsync (Xie, Koyejo, Gupta 2019): on each update x <- (1 - a_t) x + a_t x_client with
a_t = alpha * s(t - tau), t the current global version and tau the update's base
version. a_t is computed fresh from alpha for every update (never compounded).

FedBuff (Nguyen et al. 2022): buffer client deltas D_i = x_client - x_base weighted by
w_i = 1 / sqrt(1 + staleness_i); when K are buffered, x <- x + eta * sum w_i D_i / sum w_i.
We normalise by sum w_i (not by K as the paper's Algorithm 1 does) so that staleness
only re-weights updates *within* a buffer and eta keeps its meaning as a server step on
an average delta: with eta = 1 and fresh updates one buffer step lands on the mean of
the client models, like a FedAvg round with equal weights. Very stale updates are kept
out by `max_staleness` rather than by shrinking the whole step.

The buffer's weighted sum is an array the caller persists (S3) between invocations;
the counters live in `AsyncState`. Nothing here keeps state between calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedasync.core.codec import Array, Weights, check_compatible, delta_norm, spec_of
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError, StaleUpdateError
from fedasync.core.globalcheck import check_new_global


@dataclass(frozen=True)
class AsyncState:
    """What the server knows of an async task, as data (stored on the TASK item)."""

    version: int = 0
    absorbed: int = 0
    buffered: int = 0
    buffer_weight: float = 0.0


@dataclass(frozen=True)
class Absorbed:
    """The outcome of absorbing one accepted update."""

    state: AsyncState
    staleness: int
    weight: float
    new_global: Weights | None = None
    buffer_sum: Weights | None = None

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
        out[name] = _array(x64, x.dtype)
    return out


def _array(value: Array | np.generic, dtype: np.dtype[Any]) -> Array:
    """An ndarray of `dtype` and the value's shape: numpy arithmetic on 0-d arrays returns
    numpy scalars, which the codec (rightly) refuses as tensors. A cast that overflows
    gives Inf without a warning: `check_new_global` refuses it, with a reason."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value, dtype=dtype)


def absorb_fedasync(
    state: AsyncState,
    *,
    global_w: Mapping[str, Array],
    client_w: Mapping[str, Array],
    staleness: int,
    cfg: TaskConfig,
    base_w: Mapping[str, Array] | None = None,
    who: str = "update",
) -> Absorbed:
    """Mix the client's model in; the candidate is checked (`check_new_global`) first.

    With `max_update_norm` B and the base model, a legitimate step is at most
    a_t * (B + |x_base - x_head|) long (see `fedasync.core.globalcheck`)."""
    alpha_t = fedasync_alpha(staleness, cfg)
    new_global = mix(global_w, client_w, alpha_t)
    bound = cfg.max_update_norm
    max_step = (
        alpha_t * (bound + delta_norm(base_w, global_w))
        if bound is not None and base_w is not None
        else None
    )
    check_new_global(
        new_global,
        global_w,
        max_step=max_step,
        who=f"{who}: its FedAsync step (alpha_t {alpha_t:.6g})",
    )
    new_state = replace(state, version=state.version + 1, absorbed=state.absorbed + 1)
    return Absorbed(new_state, staleness, alpha_t, new_global=new_global)


def absorb_fedbuff(
    state: AsyncState,
    *,
    global_w: Mapping[str, Array],
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array],
    buffer_sum: Mapping[str, Array] | None,
    staleness: int,
    cfg: TaskConfig,
    who: str = "update",
) -> Absorbed:
    """Add w * (x_client - x_base) to the buffer; at K buffered, take the server step.

    The step is checked (`check_new_global`; at most server_lr * max_update_norm long):
    refused, it raises `GlobalRefusedError` naming the buffered updates it drops."""
    if state.buffered and buffer_sum is None:
        raise SchemaError(f"FedBuff state has {state.buffered} buffered deltas but no buffer sum")
    w = fedbuff_weight(staleness)
    summed: Weights = {}
    for name, x in client_w.items():
        delta = _array(x.astype(np.float64) - base_w[name].astype(np.float64), np.dtype(np.float64))
        delta *= w
        if state.buffered and buffer_sum is not None:
            delta += buffer_sum[name]
        summed[name] = delta
    buffered, weight_sum = state.buffered + 1, state.buffer_weight + w
    if buffered < cfg.buffer_size:
        new_state = replace(
            state, absorbed=state.absorbed + 1, buffered=buffered, buffer_weight=weight_sum
        )
        return Absorbed(new_state, staleness, w, buffer_sum=summed)
    step = cfg.server_lr / weight_sum
    new_global: Weights = {}
    for name, x in global_w.items():
        new_global[name] = _array(x.astype(np.float64) + step * summed[name], x.dtype)
    bound = cfg.max_update_norm
    check_new_global(
        new_global,
        global_w,
        max_step=cfg.server_lr * bound if bound is not None else None,
        who=f"{who}: the FedBuff step of {buffered} buffered update(s) (server_lr {cfg.server_lr:g})",
        discarded=state.buffered,
    )
    new_state = AsyncState(version=state.version + 1, absorbed=state.absorbed + 1)
    return Absorbed(new_state, staleness, w, new_global=new_global)


def after_refusal(state: AsyncState) -> AsyncState:
    """The state once a new global model was refused (`GlobalRefusedError`): the head stays
    and a FedBuff buffer is dropped (its deltas made the refused step; kept, they would
    refuse every step after it), so the next update starts a fresh buffer."""
    return replace(state, buffered=0, buffer_weight=0.0)


def absorb(
    state: AsyncState,
    cfg: TaskConfig,
    *,
    base_version: int,
    global_w: Mapping[str, Array],
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array] | None = None,
    buffer_sum: Mapping[str, Array] | None = None,
    who: str = "update",
) -> Absorbed:
    """Validate staleness and compatibility, then apply the task's async strategy."""
    staleness = staleness_of(state, base_version, who)
    check_staleness(staleness, cfg, who)
    check_compatible(client_w, spec_of(global_w), who)
    if cfg.aggregation == "fedasync":
        return absorb_fedasync(
            state,
            global_w=global_w,
            client_w=client_w,
            staleness=staleness,
            cfg=cfg,
            base_w=base_w,
            who=who,
        )
    if cfg.aggregation == "fedbuff":
        if base_w is None:
            raise SchemaError(f"{who}: FedBuff needs the base version {base_version} model")
        return absorb_fedbuff(
            state,
            global_w=global_w,
            client_w=client_w,
            base_w=base_w,
            buffer_sum=buffer_sum,
            staleness=staleness,
            cfg=cfg,
            who=who,
        )
    raise SchemaError(f"task {cfg.task_name!r} is {cfg.mode}/{cfg.aggregation}, not async")


def stop_reason(
    state: AsyncState,
    cfg: TaskConfig,
    *,
    elapsed_s: float | None = None,
    metric: float | None = None,
) -> str | None:
    """Why an async task should stop now, or None to go on."""
    if state.version >= cfg.max_versions:
        return "max_versions"
    if cfg.target_metric is not None and metric is not None and cfg.target_metric.reached(metric):
        return "target_metric"
    if elapsed_s is not None and elapsed_s >= cfg.deadline_s:
        return "deadline"
    return None
