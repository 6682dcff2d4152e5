"""Clip a model delta to an L2 bound over the whole model (every tensor at once).

DP-FedAvg's clipping (McMahan et al. 2018): `Δ · min(1, C / ‖Δ‖₂)`, the norm taken
over the concatenation of all tensors, so the bound holds for the update as a whole,
not per layer. The norm is summed in float64 chunk by chunk (no float64 copy of a whole
tensor); the clipped tensors keep their dtype. Rounding back to float32/float16 could
land a hair above `C`; the scale is then nudged down until the stored tensors are
within the bound, so the bound holds for what is actually summed, not only on paper.
The aim is a hair inside `C` (a relative `MARGIN` of 1e-9): two correct float64 norms
of the same tensors (chunked, concatenated, pairwise) differ in their last bits, and
the bound must hold by any of them. Clipping a little more is on the safe side.

`norm_before` is the unclipped norm: information about the silo's data in its own
right. Never log it, never store it; it is returned for the caller's decisions only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedasync.core.codec import Array, Weights
from fedasync.core.errors import InvalidWeightsError

CHUNK_ELEMENTS = 1 << 20
_NUDGES = 8
MARGIN = 1e-9


def l2_norm(delta: Mapping[str, Array]) -> float:
    """‖Δ‖₂ over all tensors, in float64."""
    total = 0.0
    for arr in delta.values():
        flat = np.asarray(arr).reshape(-1)
        for start in range(0, flat.size, CHUNK_ELEMENTS):
            part = flat[start : start + CHUNK_ELEMENTS].astype(np.float64)
            total += float(np.dot(part, part))
    return math.sqrt(total)


def _scaled(delta: Mapping[str, Array], scale: float) -> Weights:
    return {
        name: (np.asarray(arr, dtype=np.float64) * scale).astype(arr.dtype, copy=False)
        for name, arr in delta.items()
    }


def clip_update(delta: Mapping[str, Array], bound: float) -> tuple[Weights, float]:
    """`(clipped, norm_before)`: `delta` scaled so its whole-model L2 norm is <= `bound`.

    A delta already within the bound (less `MARGIN`) is returned as is (the same arrays, not copies);
    the core never writes into arrays it was given. A NaN or infinite delta is refused
    (`InvalidWeightsError`): it has no norm to clip to."""
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip bound must be a finite number > 0, got {bound!r}")
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise InvalidWeightsError(
            "the update's delta is not finite (NaN or Inf, or too large for float64); it "
            "cannot be clipped",
            reason="non_finite",
        )
    target = bound * (1.0 - MARGIN)
    if norm <= target:
        return dict(delta), norm
    scale = target / norm
    # the coarsest dtype's spacing: what a rounding may add, relative to a value
    eps = max(float(np.finfo(arr.dtype).eps) for arr in delta.values())
    for attempt in range(_NUDGES):
        clipped = _scaled(delta, scale)
        after = l2_norm(clipped)
        if after <= target:
            return clipped, norm
        # the dtype rounded up: shrink by the overshoot and a few of its spacings
        scale *= (target / after) * (1.0 - eps * 2.0**attempt)
    return {name: np.zeros_like(arr) for name, arr in delta.items()}, norm
