"""Central DP's step, pure: deltas in, the noised step of the global model out.

    step = release.scale · ( Σ_i w_i · clip_C(Δ_i) + N(0, (z·C)²·I) )

The deltas are folded in one at a time into a float64 sum (memory stays at the sum and
one delta, however many updates), each clipped over the whole model first; the noise
is added once to the sum (`fedasync.core.noise.add_noise`) and the normaliser applied
after. What the strategy does with the step is its own business (FedAvg and FedBuff:
`x + step`; FedAsync: `x + α_t·(x_base + noised delta − x)`, see
`fedasync.core.sensitivity`).

`clipped_sum` is the part replay can re-derive byte for byte; `noised_step` adds what
it cannot. Neither logs, and neither returns an unclipped norm or the noise itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedasync.core.clipping import clip_update
from fedasync.core.codec import Array, Weights
from fedasync.core.errors import IncompatibleUpdateError
from fedasync.core.noise import SecureGaussian, add_noise
from fedasync.core.sensitivity import Release


def clipped_sum(
    deltas: Iterable[Mapping[str, Array]], weights: Iterable[float], clip_norm: float
) -> Weights:
    """`Σ w_i · clip_C(Δ_i)` in float64, tensors in the first delta's order."""
    total: Weights = {}
    count = 0
    for delta, weight in zip(deltas, weights, strict=True):
        clipped, _ = clip_update(delta, clip_norm)  # the norm before: not kept
        if not total:
            total = {name: np.zeros(arr.shape, dtype=np.float64) for name, arr in clipped.items()}
        if list(clipped) != list(total) or any(clipped[n].shape != total[n].shape for n in total):
            raise IncompatibleUpdateError(
                f"delta {count} of the release has tensors "
                f"{[(n, a.shape) for n, a in clipped.items()]}; the first had "
                f"{[(n, a.shape) for n, a in total.items()]}"
            )
        for name, arr in clipped.items():
            total[name] += weight * arr.astype(np.float64, copy=False)
        count += 1
    if count == 0:
        raise ValueError("a release needs at least one delta")
    return total


def noised_step(
    deltas: Iterable[Mapping[str, Array]],
    release: Release,
    clip_norm: float,
    rng: SecureGaussian,
) -> Weights:
    """The release's step in float64: the clipped sum, noised with `release.noise_std`,
    scaled by `release.scale`. The caller casts to the model's dtype when it applies it."""
    total = clipped_sum(deltas, release.weights, clip_norm)
    noised = add_noise(total, release.noise_std, rng)
    del total
    for name in noised:
        np.multiply(noised[name], release.scale, out=noised[name])
    return noised
