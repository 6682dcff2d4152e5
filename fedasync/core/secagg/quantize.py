"""Fixed-point quantisation of updates into the ring Z_{2^b}, and back for the sum.

Parameters: the clipping range R (each coordinate is clipped to [-R, R]), the ring's bit
width b (32 by default) and the largest number of silos n whose inputs are summed.
One update's coordinate becomes the integer q = round(x · Q / R) in [-Q, Q] with

    Q = floor((2^(b-1) - 1) / n),

stored as q mod 2^b. A sum of at most n such integers lies in [-(2^(b-1)-1), 2^(b-1)-1],
so it is recovered exactly from its residue mod 2^b (the centred lift). The overflow
condition is that the sum's range fits the ring, 2nQ + 1 <= 2^b: it holds by construction
and is checked anyway. (The cruder n · 2^(bits used) <= 2^b, bits used = bit length of
2Q, can be off by one bit; the exact range is what decoding needs.) The step is
Δ = R / Q; at b = 32, n = 10, R = 1: Q = 214 748 364, Δ ≈ 4.7e-9.

Rounding: deterministic, to the nearest integer (ties to even). Why not stochastic
rounding: it is unbiased, but its worst case per coordinate is Δ instead of Δ/2, it
needs a second random stream at the silo, and it makes the masked input a random
function of the update (no replay, no exact test oracle). Nearest rounding's bias is at
most Δ/2 per coordinate, ~2e-9 · R at b = 32: far below float32's own resolution of a
weight (2^-24 ≈ 6e-8 relative), so unbiasedness buys nothing here. At small b with many
silos (Δ comparable to the update's scale) stochastic rounding would be the right call.

Error bound, for a sum of m <= n updates already inside [-R, R]: each coordinate of the
dequantised sum is within m · Δ / 2 of the float sum (plus float64 rounding, ~1e-16
relative). Coordinates outside [-R, R] are clipped first; that error is not bounded and
is the caller's choice of R (`clipped_fraction` says how much was cut).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedasync.core.errors import InvalidWeightsError
from fedasync.core.secagg.errors import OVERFLOW, SecAggError

# uint32 when b <= 32 (native wrap-around mod 2^32, half the memory), else uint64
RingVector = npt.NDArray[np.unsignedinteger[Any]]
FloatVector = npt.NDArray[np.float64]
MIN_RING_BITS = 16
# 62, not 64: Q · x must stay exactly representable enough in float64 and inside int64
MAX_RING_BITS = 62


@dataclass(frozen=True)
class Quantizer:
    """Clip to [-clip, clip], scale to the ring Z_{2^ring_bits}, for sums of max_silos."""

    clip: float
    max_silos: int
    ring_bits: int = 32

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"the clipping range must be a positive number, not {self.clip}")
        if not MIN_RING_BITS <= self.ring_bits <= MAX_RING_BITS:
            raise ValueError(
                f"ring_bits must be in [{MIN_RING_BITS}, {MAX_RING_BITS}], not {self.ring_bits}"
            )
        if self.max_silos < 1:
            raise ValueError(f"max_silos must be at least 1, not {self.max_silos}")
        if self.levels < 1 or 2 * self.max_silos * self.levels + 1 > self.modulus:
            raise SecAggError(
                f"a ring of {self.ring_bits} bits cannot hold the sum of {self.max_silos} "
                "updates; use more ring bits or fewer silos",
                reason=OVERFLOW,
            )

    @property
    def modulus(self) -> int:
        return 1 << self.ring_bits

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        return np.uint32 if self.ring_bits <= 32 else np.uint64

    @property
    def mask(self) -> np.unsignedinteger[Any]:
        return self.dtype(self.modulus - 1)

    @property
    def levels(self) -> int:
        """Q: the largest |q| of one update's coordinate."""
        return ((1 << (self.ring_bits - 1)) - 1) // self.max_silos

    @property
    def bits_used(self) -> int:
        """Bits one update's coordinate needs (2Q + 1 values)."""
        return (2 * self.levels).bit_length()

    @property
    def step(self) -> float:
        """Δ = R / Q: the value of one unit in the ring."""
        return self.clip / self.levels

    def sum_error_bound(self, count: int) -> float:
        """Largest |dequantised sum - float sum| per coordinate, for count updates in range."""
        return count * self.step / 2

    def clipped_fraction(self, values: npt.ArrayLike) -> float:
        """Fraction of the coordinates outside [-R, R] (cut by quantise)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        return float(np.mean(np.abs(arr) > self.clip)) if arr.size else 0.0

    def quantize(self, values: npt.ArrayLike) -> RingVector:
        """One update (any shape, flattened) as ring elements (`dtype`, below 2^b)."""
        arr = np.array(values, dtype=np.float64).ravel()  # a copy, worked on in place
        if not np.isfinite(arr).all():
            raise InvalidWeightsError("an update to quantise holds NaN or Inf")
        np.clip(arr, -self.clip, self.clip, out=arr)
        arr *= self.levels / self.clip
        # |arr| <= Q (1 + 2^-52) < Q + 1/2, so rint stays in [-Q, Q]
        np.rint(arr, out=arr)
        # int64 -> unsigned is reduction mod 2^32 or 2^64 (C's rule), and 2^b divides it
        q = arr.astype(np.int64).astype(self.dtype)
        if self.ring_bits not in {32, 64}:
            q &= self.mask
        return q

    def dequantize_sum(self, total: RingVector, count: int) -> FloatVector:
        """The float sum of `count` quantised updates from their ring sum."""
        if not 1 <= count <= self.max_silos:
            raise SecAggError(
                f"a sum of {count} updates cannot be decoded with max_silos={self.max_silos}",
                reason=OVERFLOW,
            )
        residues = np.asarray(total).astype(np.uint64) & np.uint64(self.modulus - 1)
        signed = residues.astype(np.int64)
        signed[residues >= np.uint64(1 << (self.ring_bits - 1))] -= np.int64(self.modulus)
        return signed.astype(np.float64) * self.step


def ring_sum(vectors: list[RingVector], mask: np.unsignedinteger[Any]) -> RingVector:
    """Σ vectors mod 2^b (unsigned numpy integers wrap mod 2^32 or 2^64; 2^b divides both)."""
    if not vectors:
        raise ValueError("ring_sum needs at least one vector")
    total = vectors[0].copy()
    for vec in vectors[1:]:
        total += vec
    total &= mask
    return total
