"""Robust screening of one validated update against its base version (pure).

Two per-task defences on the delta D = x_client - x_base (the whole model, L2 norm):

- `outlier_filter` (async): the update is rejected (`outlier`) when ||D|| lies far above
  the delta norms of the last `window` accepted updates (`fedasync.core.robust.outlier`).
  The window is a pure function of the accepted updates in `seq` order (`next_window`):
  the server keeps it on the TASK item, committed with the verdicts, and replay rebuilds
  it from the ledger. It holds the norms before any clipping, the quantity it judges.
- `clip_update_norm` (both modes): x_client := x_base + clip(D), with
  clip(D) = D * min(1, C / ||D||) (`fedasync.core.clipping.clip_update`), computed in
  float64 and cast back to the model's dtype (one rounding of that dtype past the bound
  at most). A delta within the bound leaves the update as it is, the same arrays.

The filter runs first, on the unclipped norm: a clipped 100x update would look ordinary.
Unlike DP clipping's `norm_before` (never stored), these norms are kept, in the server
table only: the filter cannot judge without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedasync.core.clipping import MARGIN, clip_update
from fedasync.core.codec import Array, Weights, delta_norm
from fedasync.core.config import TaskConfig
from fedasync.core.errors import InvalidWeightsError
from fedasync.core.items import task as task_item
from fedasync.core.privacy import central_dp
from fedasync.core.robust import outlier
from fedasync.core.strategies.registry import async_strategy

# the TASK item attribute holding the window (a list of floats, oldest first)
RECENT_NORMS = task_item.RECENT_NORMS


@dataclass(frozen=True)
class Screened:
    """An update that passed: its weights as absorbed (clipped, maybe), and the delta norm
    the outlier filter judged (None without a filter)."""

    weights: Mapping[str, Array]
    norm: float | None = None


def needs_base(cfg: TaskConfig) -> bool:
    """The update's base version model must be read to screen it."""
    return cfg.clip_update_norm is not None or cfg.outlier_filter is not None


def base_needed(cfg: TaskConfig) -> bool:
    """An async update's base version model is read: for the strategy (FedBuff's delta),
    the norm bound (`max_update_norm`), the screening, central DP (its delta), or a
    half-precision delta upload (`update_encoding`)."""
    return (
        async_strategy(cfg).needs_base
        or cfg.max_update_norm is not None
        or needs_base(cfg)
        or central_dp(cfg)
        or cfg.update_encoding is not None  # a delta upload reads as base + delta
    )


def check_outlier(
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array],
    cfg: TaskConfig,
    recent: Sequence[float],
    who: str,
) -> float | None:
    """The delta norm (None without a filter); `InvalidWeightsError` ('outlier') when the
    filter rejects it, the detail saying by how much and against what."""
    rule = cfg.outlier_filter
    if rule is None:
        return None
    norm = delta_norm(client_w, base_w)
    why = outlier(
        norm,
        list(recent)[-rule.window :],
        rule.k,
        min_history=rule.min_history,
        rel_floor=rule.rel_floor,
    )
    if why is not None:
        exc = InvalidWeightsError(f"{who}: {why}", reason="outlier")
        exc.attributed = True  # the client's own verified bytes
        raise exc
    return norm


def clip_to_base(
    client_w: Mapping[str, Array], base_w: Mapping[str, Array], bound: float
) -> Weights:
    """x_base + clip(x_client - x_base, bound), in the client's dtypes; `client_w`'s own
    arrays when its delta is within the bound."""
    delta = {
        name: np.asarray(x, dtype=np.float64) - np.asarray(base_w[name], dtype=np.float64)
        for name, x in client_w.items()
    }
    clipped, norm = clip_update(delta, bound)
    if norm <= bound * (1.0 - MARGIN):
        return dict(client_w)
    out: Weights = {}
    for name, x in client_w.items():
        total = np.asarray(base_w[name], dtype=np.float64) + clipped[name]
        out[name] = np.asarray(total, dtype=x.dtype)
    return out


def screen(
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array] | None,
    cfg: TaskConfig,
    recent: Sequence[float],
    who: str,
) -> Screened:
    """The outlier filter, then clipping; without a base model (a stale update, which
    the staleness check rejects next) the update passes as it is."""
    if base_w is None or not needs_base(cfg):
        return Screened(client_w)
    norm = check_outlier(client_w, base_w, cfg, recent, who)
    bound = cfg.clip_update_norm
    weights = clip_to_base(client_w, base_w, bound) if bound is not None else client_w
    return Screened(weights, norm)


def next_window(recent: Sequence[float], norm: float | None, cfg: TaskConfig) -> tuple[float, ...]:
    """The window after an update with delta norm `norm` was accepted."""
    rule = cfg.outlier_filter
    if rule is None or norm is None:
        return tuple(recent)
    return (*recent, float(norm))[-rule.window :]
