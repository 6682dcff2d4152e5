"""How much one silo can move a release, per weighting: the sensitivity that `z·C` covers.

Every strategy with DP on releases the same shape of thing:

    step = scale · ( Σ_i w_i · clip_C(Δ_i) + N(0, (z·C)²·I) )

the noise added once to the weighted sum of clipped deltas, the normaliser (`scale`)
applied after. If no silo's weights within one sum add up to more than 1, replacing a
silo's deltas by zero moves the sum by at most `C` in L2 (its clipped deltas are at
most `C` long each): the sum's sensitivity is `C` and the noise multiplier is `z` as
configured, whatever the weighting. `scale` then only depends on values the server
holds anyway and records (which silos took part, their `num_examples`, staleness,
`server_lr`), so multiplying by it is post-processing and spends nothing.

What the weights are, per strategy:

- FedAvg (sync) with DP: **equal weights** `w_i = 1`, `scale = 1/m` for the round's `m`
  updates, unless a `weight_cap` is given: `w_i = min(1, n_i / weight_cap)` and
  `scale = 1/Σ w_i`. This is DP-FedAvg's bounded weighting (McMahan et al. 2018, §2: user
  weights `w_k = min(n_k/ŵ, 1)` with a cap `ŵ`, so that the weighted sum's sensitivity
  is `S·max w_k = S`). Plain example weighting `n_i/Σn` is not used with DP: one silo
  with most of the examples would carry most of the sum, its share close to 1, and
  the noise, calibrated to the sum, would protect it no better than a lone silo while
  the others pay in accuracy. Equal weights are the default because a cap is one more
  number to choose per task and `num_examples` is the silo's own word.
- FedAsync: one update per release, `w = 1`, `scale = α_t` (the step mixes
  `α_t·(x_base + clip(Δ) + noise − x)`, `Δ` taken against the base version the silo
  trained on): the release's sensitivity is `α_t·C`, its noise `α_t·z·C`, multiplier `z`.
- FedBuff: `w_i = 1/√(1+staleness_i) <= 1`, each silo **at most once per buffer** (a
  second update of a silo before the flush is rejected, `dp_silo_in_buffer`), so the
  sum's sensitivity is `C·w_max` (the buffer's largest weight) and the flush adds
  `N(0, (z·C·w_max)²)`: multiplier `z`. `scale = server_lr / K` (`normalize: k`, the
  default; step sensitivity `server_lr·C·w_max/K`) or `server_lr / Σ w_i`
  (`normalize: weights`; step sensitivity `server_lr·C·w_max/Σ w_i`).

Why one update per silo and not a silo's weights scaled down to add up to 1: DP-FedAvg's
user-level DP (McMahan et al. 2018) has each user contribute one clipped update per
round, and a buffer flush is FedBuff's round. Scaling weights down after the fact would
reweight deltas already summed into the stored buffer (it keeps only the sum), and
capping the later update's weight to what is left would make the weighting depend on
arrival order. `silo_capped` is the cap for sums that do take a silo more than once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedasync.core.privacy import noise_std


@dataclass(frozen=True)
class Release:
    """One noised sum and how it becomes a step of the global model."""

    weights: tuple[float, ...]  # per update in the sum, in the order given
    scale: float  # the normaliser, applied to the noised sum
    sum_sensitivity: float  # L2 sensitivity of the weighted sum to one silo
    noise_std: float  # per coordinate, added to the sum: z·C

    @property
    def step_std(self) -> float:
        """Per-coordinate standard deviation of the noise in the global model's step."""
        return self.scale * self.noise_std

    @property
    def step_sensitivity(self) -> float:
        """How far one silo can move the step (before noise)."""
        return self.scale * self.sum_sensitivity


def _check_bound(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")


def sum_sensitivity(clip_norm: float, client_ids: Sequence[str], weights: Sequence[float]) -> float:
    """L2 sensitivity of `Σ w_i clip_C(Δ_i)` to one silo: `C · max over silos Σ_its w_i`."""
    _check_bound(clip_norm)
    if len(client_ids) != len(weights):
        raise ValueError(f"{len(client_ids)} client ids for {len(weights)} weights")
    totals: dict[str, float] = {}
    for client, weight in zip(client_ids, weights, strict=True):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight {weight!r} of client {client!r} is not a number >= 0")
        totals[client] = totals.get(client, 0.0) + weight
    return clip_norm * max(totals.values(), default=0.0)


def silo_capped(client_ids: Sequence[str], weights: Sequence[float]) -> tuple[float, ...]:
    """The weights, each silo's scaled down so that they add up to at most 1."""
    totals: dict[str, float] = {}
    for client, weight in zip(client_ids, weights, strict=True):
        totals[client] = totals.get(client, 0.0) + weight
    return tuple(
        w / totals[c] if totals[c] > 1.0 else w for c, w in zip(client_ids, weights, strict=True)
    )


def _release(
    clip_norm: float, noise_multiplier: float, client_ids: Sequence[str], weights: Sequence[float]
) -> tuple[tuple[float, ...], float, float]:
    if not client_ids:
        raise ValueError("a release needs at least one update")
    capped = silo_capped(client_ids, weights)
    sensitivity = sum_sensitivity(clip_norm, client_ids, capped)
    return capped, sensitivity, noise_std(clip_norm, noise_multiplier)


def fedavg_release(
    clip_norm: float,
    noise_multiplier: float,
    client_ids: Sequence[str],
    num_examples: Sequence[int],
    weight_cap: int | None = None,
) -> Release:
    """A DP FedAvg round: equal weights (or `min(1, n_i/weight_cap)`), `scale = 1/Σ w`."""
    if weight_cap is not None and weight_cap < 1:
        raise ValueError(f"weight_cap must be a number of examples >= 1, got {weight_cap!r}")
    if len(client_ids) != len(num_examples):
        raise ValueError(f"{len(client_ids)} client ids for {len(num_examples)} counts")
    raw = [1.0 if weight_cap is None else min(1.0, n / weight_cap) for n in num_examples]
    capped, sensitivity, std = _release(clip_norm, noise_multiplier, client_ids, raw)
    total = sum(capped)
    if total <= 0:
        raise ValueError("every update of the round has weight 0 (0 examples)")
    return Release(capped, 1.0 / total, sensitivity, std)


def fedasync_release(clip_norm: float, noise_multiplier: float, alpha_t: float) -> Release:
    """One FedAsync absorbed update: the sum is its clipped delta, `scale = α_t`."""
    if not (math.isfinite(alpha_t) and 0 < alpha_t <= 1):
        raise ValueError(f"alpha_t must lie in (0, 1], got {alpha_t!r}")
    capped, sensitivity, std = _release(clip_norm, noise_multiplier, ["one"], [1.0])
    return Release(capped, alpha_t, sensitivity, std)


def fedbuff_release(
    clip_norm: float,
    noise_multiplier: float,
    client_ids: Sequence[str],
    staleness: Sequence[int],
    server_lr: float,
    *,
    normalize: str = "k",
) -> Release:
    """One FedBuff flush: `w_i = 1/√(1+s_i)`, each silo once, sensitivity and noise scaled
    by the largest weight, `scale = η / K` (`normalize` "k") or `η / Σ w` ("weights")."""
    if len(client_ids) != len(staleness):
        raise ValueError(f"{len(client_ids)} client ids for {len(staleness)} staleness values")
    if len(set(client_ids)) != len(client_ids):
        raise ValueError(f"a FedBuff release takes each silo once, got {list(client_ids)}")
    if any(s < 0 for s in staleness):
        raise ValueError(f"staleness must be >= 0, got {list(staleness)}")
    if not (math.isfinite(server_lr) and server_lr > 0):
        raise ValueError(f"server_lr must be a finite number > 0, got {server_lr!r}")
    if normalize not in ("k", "weights"):
        raise ValueError(f"normalize must be 'k' or 'weights', got {normalize!r}")
    raw = [1.0 / math.sqrt(1.0 + s) for s in staleness]
    weights, sensitivity, std = _release(clip_norm, noise_multiplier, client_ids, raw)
    divisor = len(weights) if normalize == "k" else sum(weights)
    return Release(weights, server_lr / divisor, sensitivity, std * max(weights))
