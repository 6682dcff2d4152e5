"""Central DP on a SecAgg round's unmasked sum (DP-FedAvg, as `strategies/central_dp.py`).

The server cannot clip what SecAgg hides, so each silo clips its own delta: its input
is x_u = (clip(Δ_u), 1 · step), equal weights (DP-FedAvg's). The server adds
N(0, (z·C)²) to each coordinate of the unmasked sum of the deltas (not to the count m,
which is public: who survived is) and takes the step w + (Σ clip(Δ_u) + noise) / m.

Sensitivity with quantisation: a silo's input reaches the sum as q_u · step, within
step/2 of x_u per coordinate, so ‖q_u · step‖₂ <= ‖x_u‖₂ + √d · step / 2. The silo
clips to C − √d · step / 2, so what one silo adds to the sum has L2 norm at most C
whatever the rounding: the Gaussian mechanism with noise multiplier z on C holds for
the quantised sum itself. The quantiser's own per-coordinate clip to [-R, R] (R >= C,
checked by the config) only shortens a vector further. One release per round.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fedasync.core.noise import SecureGaussian, add_noise
from fedasync.core.privacy import PrivacyConfig, noise_std
from fedasync.core.secagg.errors import PROTOCOL, SecAggError

Flat = npt.NDArray[np.float64]


def clip_bound(clip_norm: float, coordinates: int, step: float) -> float:
    """The L2 bound a silo clips its delta to: C less the rounding's worst case."""
    bound = clip_norm - math.sqrt(coordinates) * step / 2
    if bound <= 0:
        raise SecAggError(
            f"privacy.clip_norm {clip_norm:g} is below the quantisation's worst-case "
            f"rounding of {coordinates} coordinates ({math.sqrt(coordinates) * step / 2:g}): "
            "use more ring bits or a larger clip_norm",
            reason=PROTOCOL,
        )
    return bound


def central_input(delta: Flat, clip_norm: float, step: float) -> Flat:
    """A silo's input under central DP: its delta clipped (`clip_bound`), and weight 1."""
    bound = clip_bound(clip_norm, delta.size, step)
    norm = float(np.linalg.norm(delta))
    clipped = delta * (bound / norm) if norm > bound else delta
    return np.concatenate([clipped, np.array([step])])


def release(total: Flat, privacy: PrivacyConfig, rng: SecureGaussian) -> Flat:
    """Σ clip(Δ_u) + N(0, (z·C)²) per coordinate: the round's one release (float64)."""
    std = noise_std(privacy.clip_norm, privacy.noise_multiplier)
    noised: Flat = add_noise({"sum": np.asarray(total, dtype=np.float64)}, std, rng)["sum"]
    return noised


def details(privacy: PrivacyConfig, updates: int) -> dict[str, object]:
    """The round's `dp` record, as the sync DP-FedAvg fold writes it."""
    return {
        "clip_norm": privacy.clip_norm,
        "noise_multiplier": privacy.noise_multiplier,
        "noise_std": noise_std(privacy.clip_norm, privacy.noise_multiplier),
        "updates": updates,
    }
