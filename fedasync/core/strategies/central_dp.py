"""Central differential privacy for a sync round (DP-FedAvg, McMahan et al. 2018).

Each accepted update's delta from the round's global model is clipped to L2 norm `C`
over the whole model; the clipped deltas are summed (equal weights: see
`fedasync.core.sensitivity`), Gaussian noise N(0, (z·C)²) is added once to the sum, and
the noised sum, divided by the round's m updates, is the step:

    x_{r+1} = x_r + (Σ_i clip_C(x_i − x_r) + N(0, (z·C)² I)) / m

Replacing one silo's update moves the sum by at most C (one update per silo per round),
so the release is the Gaussian mechanism with noise multiplier z; dividing by m (who
took part is recorded and public) is post-processing. The noise comes from the
`SecureGaussian` the caller passes (built at the edge, a fresh key per release); the
fold never logs, returns or keeps an unclipped norm or the noise.

Where this differs from the paper: DP-FedAvg samples users each round with probability
q and divides by the expected count qW, which is what buys its amplification by
sampling. Every listed silo is asked each round here, so no amplification is claimed
(the accountant composes plain Gaussian releases), and the divisor is the number of
updates that arrived.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedasync.core.clipping import clip_update
from fedasync.core.codec import Array, ModelSpec, Weights, check_compatible
from fedasync.core.errors import SchemaError
from fedasync.core.noise import SecureGaussian, add_noise
from fedasync.core.privacy import PrivacyConfig, noise_std


class CentralDpFold:
    """The fold of a sync round under central DP (a `Fold`: `add`, then `result`)."""

    def __init__(
        self,
        global_w: Mapping[str, Array],
        spec: ModelSpec,
        privacy: PrivacyConfig,
        rng: SecureGaussian,
        *,
        who: str,
    ) -> None:
        self._global = global_w
        self._spec, self._privacy, self._rng, self._who = spec, privacy, rng, who
        self._sum: dict[str, Array] = {}
        self.count = 0
        self.details: dict[str, object] = {}

    def add(self, weights: Mapping[str, Array], num_examples: int, who: str = "update") -> None:
        check_compatible(weights, self._spec, who)
        delta = {
            t.name: np.asarray(weights[t.name], dtype=np.float64)
            - np.asarray(self._global[t.name], dtype=np.float64)
            for t in self._spec
        }
        clipped, _ = clip_update(delta, self._privacy.clip_norm)  # the norm is not kept
        del delta
        for name, arr in clipped.items():
            if name in self._sum:
                self._sum[name] += arr
            else:
                self._sum[name] = np.array(arr, dtype=np.float64, copy=True)
        self.count += 1

    def result(self) -> Weights:
        if self.count == 0:
            raise SchemaError(f"{self._who}: no updates to release (empty round)")
        std = noise_std(self._privacy.clip_norm, self._privacy.noise_multiplier)
        noised = add_noise(self._sum, std, self._rng)
        self._sum = {}
        out: Weights = {}
        for t in self._spec:
            x = np.asarray(self._global[t.name], dtype=np.float64)
            out[t.name] = (x + noised.pop(t.name) / self.count).astype(t.dtype)
        self.details = {
            "dp": {
                "clip_norm": self._privacy.clip_norm,
                "noise_multiplier": self._privacy.noise_multiplier,
                "noise_std": std,
                "updates": self.count,
            }
        }
        return out
