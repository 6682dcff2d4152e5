"""Shamir secret sharing (t of n) over the prime field GF(p), p = 2^127 - 1.

A secret of `length` bytes is cut into 15-byte chunks (120 bits < 127, so every chunk is
a field element); each chunk is the constant term of its own random polynomial of degree
t - 1 whose other coefficients come from `secrets.randbelow(p)`. Share x holds the
polynomials' values at x (x in 1..65535, never 0). Any t shares give the secret back by
Lagrange interpolation at 0; t - 1 shares are consistent with every secret (perfect
secrecy), so they say nothing about it. A 32-byte secret costs 3 elements: 2 + 48 bytes
per share on the wire.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedasync.core.secagg.errors import BAD_SHARE, BELOW_THRESHOLD, PROTOCOL, SecAggError

PRIME = (1 << 127) - 1
CHUNK_BYTES = 15
ELEMENT_BYTES = 16
MAX_X = 0xFFFF


def element_count(length: int) -> int:
    return -(-length // CHUNK_BYTES)


@dataclass(frozen=True)
class Share:
    """The values at `x` of the polynomials sharing one secret."""

    x: int
    values: tuple[int, ...]

    def __repr__(self) -> str:
        return f"Share(x={self.x}, values=<{len(self.values)} elements, not shown>)"

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(2, "big") + b"".join(
            v.to_bytes(ELEMENT_BYTES, "big") for v in self.values
        )

    @classmethod
    def from_bytes(cls, raw: bytes, length: int) -> Share:
        count = element_count(length)
        if len(raw) != 2 + ELEMENT_BYTES * count:
            raise SecAggError(f"a share of a {length}-byte secret is malformed", reason=PROTOCOL)
        x = int.from_bytes(raw[:2], "big")
        values = tuple(
            int.from_bytes(raw[2 + ELEMENT_BYTES * i : 2 + ELEMENT_BYTES * (i + 1)], "big")
            for i in range(count)
        )
        share = cls(x, values)
        _check(share, count)
        return share


def _check(share: Share, count: int) -> None:
    if not 1 <= share.x <= MAX_X or len(share.values) != count:
        raise SecAggError(f"a share has x={share.x} or the wrong size", reason=PROTOCOL)
    if any(not 0 <= v < PRIME for v in share.values):
        raise SecAggError(f"share x={share.x} holds a value outside the field", reason=PROTOCOL)


def _chunks(secret: bytes) -> list[int]:
    return [
        int.from_bytes(secret[i : i + CHUNK_BYTES], "big")
        for i in range(0, len(secret), CHUNK_BYTES)
    ]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, xs: Iterable[int], threshold: int) -> dict[int, Share]:
    """Shares of `secret` at each x in `xs`, any `threshold` of which reconstruct it."""
    points = sorted(set(xs))
    if not secret:
        raise ValueError("cannot share an empty secret")
    if threshold < 1 or threshold > len(points):
        raise ValueError(f"threshold {threshold} needs 1 <= t <= {len(points)} shares")
    if any(not 1 <= x <= MAX_X for x in points):
        raise ValueError(f"share points must be in 1..{MAX_X}")
    polys = [
        [chunk] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for chunk in _chunks(secret)
    ]
    return {x: Share(x, tuple(_evaluate(p, x) for p in polys)) for x in points}


def interpolate(shares: Sequence[Share], threshold: int) -> tuple[int, ...]:
    """The polynomials' values at 0 from the first `threshold` shares (Lagrange)."""
    if len(shares) < threshold:
        raise SecAggError(
            f"{len(shares)} shares cannot reconstruct a secret shared with threshold {threshold}",
            reason=BELOW_THRESHOLD,
        )
    used = list(shares)[:threshold]
    xs = [s.x for s in used]
    if len(set(xs)) != len(xs):
        raise SecAggError("two shares have the same x", reason=PROTOCOL)
    count = len(used[0].values)
    for share in used:
        _check(share, count)
    result = [0] * count
    for i, share in enumerate(used):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - share.x) % PRIME
        weight = num * pow(den, -1, PRIME) % PRIME
        for k, value in enumerate(share.values):
            result[k] = (result[k] + value * weight) % PRIME
    return tuple(result)


def reconstruct(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """The `length`-byte secret from at least `threshold` shares."""
    values = interpolate(shares, threshold)
    sizes = [min(CHUNK_BYTES, length - i) for i in range(0, length, CHUNK_BYTES)]
    if len(values) != len(sizes):
        raise SecAggError(f"the shares are not of a {length}-byte secret", reason=PROTOCOL)
    if any(v >= 1 << (8 * size) for v, size in zip(values, sizes, strict=True)):
        raise SecAggError("the shares are inconsistent (one is wrong)", reason=BAD_SHARE)
    return b"".join(v.to_bytes(size, "big") for v, size in zip(values, sizes, strict=True))
