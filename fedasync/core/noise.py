"""Gaussian noise for differential privacy, from a cryptographically secure source.

Why not numpy: `np.random.default_rng()` is PCG64, a fast statistical generator whose
whole state (128 bits) can be recovered from a few of its outputs; whoever recovers it
can predict, and subtract, every other draw. Noise that can be subtracted protects
nothing. The source here is the ChaCha20 stream cipher (RFC 8439, through the
`cryptography` package, i.e. OpenSSL) keyed with 32 bytes from `os.urandom` (the
kernel's CSPRNG): as long as ChaCha20 is a secure cipher, its keystream cannot be told
from uniform random bytes, and no number of outputs reveals the key or the others.
The key lives only inside the cipher context: it is never logged, stored, returned or
kept as an attribute, and a new `SecureGaussian` draws a new key.

Bytes to normals: each 64-bit little-endian word gives a 53-bit uniform in (0, 1)
(`((w >> 11) + 0.5) · 2⁻⁵³`, never 0, so the log below is finite), and pairs of
uniforms give pairs of normals by Box-Muller. Box-Muller rather than the Ziggurat:
it is two array expressions in numpy with no rejection loop or lookup tables, every
draw costs the same number of keystream bytes (the noise of a given size consumes a
fixed length of stream), and its price (a log, a sqrt, a sin and a cos per pair) is
small next to the cipher. Its tails are cut at `√(-2 ln(2⁻⁵⁴)) ≈ 8.65 σ`, a
probability below 1e-17 per draw. Big tensors are noised chunk by chunk (a chunk of
uniforms at a time), so memory stays flat.

Known limit, stated for reviewers: this is floating-point Gaussian noise. A sampler
on doubles does not produce exactly the continuous Gaussian the accountant assumes
(Mironov 2012 showed a Laplace sampler on doubles leaking through its gaps; Jin et al.
2022 studied Gaussian samplers). An exactly discrete Gaussian (Canonne, Kamath &
Steinke 2020) with integer-encoded updates would close that gap; it is not done here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedasync.core.codec import Array, Weights

KEY_BYTES = 32
CHUNK_NORMALS = 1 << 20  # 8 MiB of keystream and of float64 per chunk
# ChaCha20 as OpenSSL runs it has a 32-bit block counter: 2^32 blocks of 64 bytes per
# key and nonce. One generator never goes past that (the keystream would repeat).
MAX_STREAM_BYTES = (1 << 32) * 64
_TWO_PI = 2.0 * math.pi
_INV_2_53 = 2.0**-53
_ZEROS = bytes(8 * CHUNK_NORMALS)  # encrypted, they are the keystream


class SecureGaussian:
    """Standard normal draws from a ChaCha20 keystream keyed by `os.urandom(32)`.

    `key`: None (always, outside tests) draws a fresh key from the OS; a fixed 32-byte
    key is only for tests that need the same draws twice."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        elif not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"a SecureGaussian key is {KEY_BYTES} bytes")
        # counter 0, nonce 0: each key drives exactly one stream, so the nonce never
        # needs to differ; the key is not kept anywhere but inside the cipher context
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._used = 0

    def __repr__(self) -> str:
        return "SecureGaussian(chacha20, key not shown)"

    def _words(self, count: int) -> np.ndarray[tuple[int], np.dtype[np.uint64]]:
        size = 8 * count
        if self._used + size > MAX_STREAM_BYTES:
            raise RuntimeError(
                "this SecureGaussian has used its keystream (256 GiB); create a new one"
            )
        self._used += size
        chunks = []
        for start in range(0, size, len(_ZEROS)):
            part = min(len(_ZEROS), size - start)
            chunks.append(self._stream.update(memoryview(_ZEROS)[:part]))
        return np.frombuffer(b"".join(chunks), dtype="<u8").astype(np.uint64, copy=False)

    def uniform(self, count: int) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        """`count` uniforms in (0, 1) with 53 random bits each."""
        words = self._words(count)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * _INV_2_53

    def standard_normal(self, count: int) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        """`count` independent N(0, 1) draws (Box-Muller on pairs of uniforms)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        pairs = (count + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log(u[:pairs]))
        angle = _TWO_PI * u[pairs:]
        out = np.empty(2 * pairs, dtype=np.float64)
        np.multiply(radius, np.cos(angle), out=out[:pairs])
        np.multiply(radius, np.sin(angle), out=out[pairs:])
        return out[:count]

    def normal_chunks(
        self, count: int, chunk: int = CHUNK_NORMALS
    ) -> Iterator[np.ndarray[tuple[int], np.dtype[np.float64]]]:
        """`count` N(0, 1) draws, `chunk` at a time."""
        for start in range(0, count, chunk):
            yield self.standard_normal(min(chunk, count - start))


def add_noise(sum_w: Mapping[str, Array], std: float, rng: SecureGaussian) -> Weights:
    """`sum_w + N(0, std²)` per coordinate, in float64, each tensor back in its dtype.

    Only a `SecureGaussian` is accepted: a seeded numpy generator here would make the
    noise reproducible by anyone who learns the seed. The noise is never logged or
    returned apart from the sum it is added to. Tensors are noised in the order given."""
    if not isinstance(rng, SecureGaussian):
        raise TypeError(
            f"noise must come from a SecureGaussian, not {type(rng).__name__}: a "
            "statistical generator's draws can be predicted and subtracted"
        )
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"noise std must be a finite number > 0, got {std!r}")
    noised: Weights = {}
    for name, arr in sum_w.items():
        out = np.array(arr, dtype=np.float64, copy=True)
        flat = out.reshape(-1)
        start = 0
        for draws in rng.normal_chunks(flat.size):
            flat[start : start + draws.size] += std * draws
            start += draws.size
        noised[name] = out.astype(arr.dtype, copy=False)
    return noised
