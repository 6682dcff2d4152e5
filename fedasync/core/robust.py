"""Robust aggregation for sync rounds: coordinate-wise median, trimmed mean, Krum and
Multi-Krum; and, for async tasks, an outlier filter on delta norms.

Pure functions over lists of `{name: ndarray}` updates with the same tensor names,
shapes and dtypes (the caller validated each against the global model; see
`fedasync.core.codec.validate`). A result keeps the input dtype and the tensor order of
the first update. None of them weighs an update by its `num_examples`: as in the papers
they follow, a silo cannot buy influence by claiming more examples.

Memory. Updates may be `np.memmap`-backed (mapped from files on disk), so no function
holds all N updates in memory at once: each tensor is read by flat chunks of `chunk`
elements; the N updates' slices of one chunk are stacked into one float64 buffer
(N x chunk), reduced, and written into the output model. Peak memory, besides what the
caller maps:

- `median`, `trimmed_mean`: N x chunk x 8 bytes + one output model;
- `krum`, `krum_select`: N x chunk x 8 + N x 4096 x 8 (centring) + 3 x N x N x 8 bytes
  (distances, one chunk's Gram matrix) + one output model (Multi-Krum re-reads only the m
  chosen updates, m x chunk x 8). Time: one N x chunk by chunk x N product per chunk.

With the default chunk (1 << 18 elements, 2 MiB of float64 per update) 100 updates need
200 MiB, whatever the model size. (Add an N x chunk bytes mask, to check the values are
finite, and a few chunk x 8 temporaries for one chunk's result.) A C-contiguous tensor (a safetensors file mapped with
np.memmap is one) is sliced without a copy; another one is read slice by slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedasync.core.chunked import (
    CHUNK_ELEMENTS,
    Updates,
    blocks,
    check_chunk,
    check_updates,
    empty_like,
    integer,
)
from fedasync.core.codec import Array, ModelSpec, Weights, spec_of
from fedasync.core.errors import SchemaError

__all__ = [
    "CHUNK_ELEMENTS",
    "check_updates",
    "krum",
    "krum_scores",
    "krum_select",
    "median",
    "outlier",
    "trimmed_mean",
]

REFERENCE_COLUMNS = 1 << 12  # Krum's centring works on N x 4096 pieces of a chunk
# 1.4826 x MAD estimates the standard deviation of normal data: k = 4.5 is ~3 sigma
OUTLIER_K = 4.5
OUTLIER_MIN_HISTORY = 5
OUTLIER_REL_FLOOR = 0.05


def _reduce(updates: Updates, spec: ModelSpec, chunk: int, what: str, k: int) -> Weights:
    """Sort each coordinate's N values, then average the middle ones (k trimmed each side).

    Sorting first makes the result independent of the order of the updates, bit for bit:
    the sum runs over the sorted values."""
    out = empty_like(updates[0], spec)
    n = len(updates)
    kept = n - 2 * k
    for name, start, stop, block in blocks(updates, spec, chunk, what):
        # -0.0 + 0.0 is +0.0: the sort sees -0.0 == 0.0 and would keep whichever came first,
        # making a zero's sign depend on the order of the updates
        np.add(block, 0.0, out=block)
        block.sort(axis=0)
        if kept == 1:
            values = block[k].copy()
        elif kept == 2:
            # halved first, so two values near the float64 limit do not overflow; equal to
            # (a + b) / 2 otherwise (scaling by 2 commutes with rounding)
            values = block[k] * 0.5 + block[k + 1] * 0.5
        else:
            values = block[k : n - k].sum(axis=0) / kept
        out[name].reshape(-1)[start:stop] = values
    return out


def median(updates: Updates, *, chunk: int = CHUNK_ELEMENTS) -> Weights:
    """Coordinate-wise median (Yin et al. 2018): per coordinate, the middle value of the N
    updates; for even N the mean of the two middle values."""
    check_chunk(chunk)
    spec = check_updates(updates, "median")
    n = len(updates)
    return _reduce(updates, spec, chunk, "median", (n - 1) // 2)


def trimmed_mean(updates: Updates, beta: float, *, chunk: int = CHUNK_ELEMENTS) -> Weights:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the
    floor(beta * N) largest and the floor(beta * N) smallest values, average the rest.

    0 <= beta < 0.5; beta = 0 is the plain (unweighted) mean."""
    check_chunk(chunk)
    spec = check_updates(updates, "trimmed_mean")
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 0.5:
        raise SchemaError(f"trimmed_mean: beta must be in [0, 0.5), got {beta!r}")
    n = len(updates)
    k = math.floor(beta * n)
    if n - 2 * k < 1:  # cannot happen for beta < 0.5; kept as the rule the docs state
        raise SchemaError(f"trimmed_mean: beta {beta} trims all {n} updates")
    return _reduce(updates, spec, chunk, "trimmed_mean", k)


def _check_krum(n: int, f: int, m: int) -> None:
    f, m = integer(f, "f", "krum"), integer(m, "m", "krum")
    if f < 0:
        raise SchemaError(f"krum: f must be >= 0, got f={f}")
    if n <= 2 * f + 2:
        raise SchemaError(
            f"krum: needs n > 2f + 2 updates; got n={n} with f={f} (at least {2 * f + 3})"
        )
    if not 1 <= m <= n:
        raise SchemaError(f"krum: m must be in [1, n={n}], got m={m}")


def _center(block: Array) -> None:
    """Subtract, per coordinate, the (upper) median of the N updates, in place. Distances
    do not change; the Gram identity below then works on the honest spread, not on the
    model's magnitude or on a far-away update, which would cancel its precision away.
    Column pieces bound np.partition's copy to N x REFERENCE_COLUMNS."""
    mid = block.shape[0] // 2
    for start in range(0, block.shape[1], REFERENCE_COLUMNS):
        piece = block[:, start : start + REFERENCE_COLUMNS]
        piece -= np.partition(piece, mid, axis=0)[mid]


def _distances(updates: Updates, spec: ModelSpec, chunk: int) -> Array:
    """Squared L2 distances between every pair of updates over the whole model (N x N),
    accumulated chunk by chunk as |a|^2 + |b|^2 - 2 a.b on median-centred chunks (one
    matrix product per chunk: ~100x faster than N^2 / 2 vector differences)."""
    n = len(updates)
    dist = np.zeros((n, n), dtype=np.float64)
    for _name, _start, _stop, block in blocks(updates, spec, chunk, "krum"):
        _center(block)
        sq = np.einsum("ij,ij->i", block, block)
        part = sq[:, None] + sq[None, :] - 2.0 * (block @ block.T)
        np.maximum(part, 0.0, out=part)  # rounding may leave a tiny negative
        dist += part
    np.fill_diagonal(dist, 0.0)
    return (dist + dist.T) * 0.5  # exactly symmetric


def krum_scores(updates: Updates, f: int, *, chunk: int = CHUNK_ELEMENTS) -> Array:
    """score_i = sum of the squared distances from update i to its n - f - 2 nearest
    other updates (Blanchard et al. 2017, §4)."""
    check_chunk(chunk)
    spec = check_updates(updates, "krum")
    n = len(updates)
    _check_krum(n, f, 1)
    dist = _distances(updates, spec, chunk)
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.sort(np.delete(dist[i], i))
        scores[i] = others[: n - f - 2].sum()
    return scores


def krum_select(updates: Updates, f: int, m: int = 1, *, chunk: int = CHUNK_ELEMENTS) -> list[int]:
    """Indices of the m best-scored updates (lowest score first); equal scores are broken
    by the lowest index (a stable sort), so the choice is deterministic."""
    check_updates(updates, "krum")
    _check_krum(len(updates), f, m)
    scores = krum_scores(updates, f, chunk=chunk)
    order = np.argsort(scores, kind="stable")
    return [int(i) for i in order[:m]]


def krum(updates: Updates, f: int, m: int = 1, *, chunk: int = CHUNK_ELEMENTS) -> Weights:
    """Krum (Blanchard et al. 2017) for m = 1: a copy of the best-scored update.
    Multi-Krum for m > 1: the unweighted mean of the m best-scored updates (averaged in
    float64 in index order). Requires n > 2f + 2; equal scores go to the lowest index."""
    return mean_of(updates, krum_select(updates, f, m, chunk=chunk), chunk=chunk)


def mean_of(updates: Updates, chosen: Sequence[int], *, chunk: int = CHUNK_ELEMENTS) -> Weights:
    """The unweighted mean of the `chosen` updates (a copy of the one, for one), in float64
    by chunks in index order: Krum's result once `krum_select` has chosen."""
    spec = spec_of(updates[0])
    if len(chosen) == 1:
        best = updates[chosen[0]]
        return {t.name: np.array(best[t.name], dtype=best[t.name].dtype, copy=True) for t in spec}
    picked = [updates[i] for i in sorted(chosen)]
    out = empty_like(updates[0], spec)
    for name, start, stop, block in blocks(picked, spec, chunk, "krum"):
        out[name].reshape(-1)[start:stop] = block.sum(axis=0) / len(chosen)
    return out


def outlier(
    norm: float,
    recent_norms: Sequence[float],
    k: float = OUTLIER_K,
    *,
    min_history: int = OUTLIER_MIN_HISTORY,
    rel_floor: float = OUTLIER_REL_FLOOR,
) -> str | None:
    """A reason string when an async update's delta norm lies far above the recent ones,
    else None.

    With med = median(recent_norms) and MAD = median(|recent - med|), the update is an
    outlier when norm > med + k * max(MAD, rel_floor * med). The floor keeps a history of
    (nearly) equal norms, MAD ~ 0, from rejecting every update a hair above the median;
    rel_floor = 0 gives the plain rule. Only the upper side is tested: honest updates
    shrink as training converges, and a small step does little harm, while the scaled
    updates this filter exists for are large. (A sign-flipped update of ordinary norm
    passes: norms cannot see direction.) Below `min_history` recent norms nothing is
    rejected. `recent_norms` are the delta norms of the last accepted updates; the
    caller chooses the window.
    """
    if not all(math.isfinite(x) and x >= 0 for x in recent_norms):
        raise SchemaError("outlier: recent_norms must be finite and >= 0")
    if not (math.isfinite(k) and k > 0 and rel_floor >= 0 and min_history >= 1):
        raise SchemaError(
            f"outlier: needs k > 0, rel_floor >= 0, min_history >= 1; got k={k}, "
            f"rel_floor={rel_floor}, min_history={min_history}"
        )
    if not math.isfinite(norm):
        return f"outlier: delta norm {norm} is not finite"
    if len(recent_norms) < min_history:
        return None
    history = np.asarray(recent_norms, dtype=np.float64)
    med = float(np.median(history))
    mad = float(np.median(np.abs(history - med)))
    spread = max(mad, rel_floor * med)
    limit = med + k * spread
    if norm > limit:
        return (
            f"outlier: delta norm {norm:.6g} > {limit:.6g} = median {med:.6g} + {k:g} x "
            f"spread {spread:.6g} (MAD {mad:.6g}) of the last {len(history)} accepted"
        )
    return None
