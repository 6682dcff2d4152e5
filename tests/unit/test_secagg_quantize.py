"""Fixed-point quantisation into Z_{2^b}: exact hand values, the error bound, overflow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedasync.core.errors import InvalidWeightsError
from fedasync.core.secagg.crypto import RoundContext, expand, pair_seed
from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.quantize import Quantizer, ring_sum


def test_hand_values_at_16_bits_for_one_silo():
    # GIVEN R = 1, b = 16, n = 1: Q = 2^15 - 1 = 32767
    q = Quantizer(clip=1.0, max_silos=1, ring_bits=16)
    assert (q.levels, q.bits_used) == (32767, 16)
    # WHEN 1, -1, 0.5, 2 (clipped to 1) and -0.25 are quantised
    out = q.quantize([1.0, -1.0, 0.5, 2.0, -0.25])
    # THEN 32767; 65536 - 32767; round(16383.5) = 16384 (ties to even); 32767;
    # 65536 - round(8191.75) = 65536 - 8192
    assert out.tolist() == [32767, 32769, 16384, 32767, 57344]
    # AND the sum decodes back through the centred lift
    assert q.dequantize_sum(out[:1], 1).tolist() == [1.0]
    assert q.dequantize_sum(out[1:2], 1).tolist() == [-1.0]


def test_the_default_ring_for_ten_silos():
    # GIVEN b = 32, n = 10, R = 1  THEN Q = floor((2^31 - 1) / 10) and the sum's range
    # [-10Q, 10Q] fits the ring: 2 · 10 · Q + 1 <= 2^32
    q = Quantizer(clip=1.0, max_silos=10)
    assert q.levels == 214_748_364
    assert 2 * 10 * q.levels + 1 <= 2**32
    assert q.step == pytest.approx(4.656612877414201e-09)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 50),
    st.sampled_from([16, 24, 32, 48, 62]),
    st.floats(0.01, 100.0),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_error_is_within_m_delta_over_2(n, bits, clip, seed):
    # GIVEN n updates of 20 coordinates inside [-R, R]
    q = Quantizer(clip=clip, max_silos=n, ring_bits=bits)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-clip, clip, size=(n, 20))
    # WHEN each is quantised, the ring sum taken and dequantised
    total = ring_sum([q.quantize(x) for x in xs], q.mask)
    back = q.dequantize_sum(total, n)
    # THEN every coordinate is within n·Δ/2 of the float sum (float64 slack 1e-9 relative)
    err = np.abs(back - xs.sum(axis=0))
    assert np.all(err <= q.sum_error_bound(n) * (1 + 1e-9) + 1e-12 * n * clip)


def test_a_ring_too_small_for_the_silos_is_refused():
    # GIVEN b = 16: 2^15 - 1 levels at most  WHEN 2^15 silos are asked for  THEN refused
    with pytest.raises(SecAggError, match="cannot hold the sum of 32768") as err:
        Quantizer(clip=1.0, max_silos=2**15, ring_bits=16)
    assert err.value.reason == "secagg_overflow"
    # AND a sum of more updates than max_silos cannot be decoded
    q = Quantizer(clip=1.0, max_silos=3)
    with pytest.raises(SecAggError, match="sum of 4 updates"):
        q.dequantize_sum(np.zeros(2, dtype=np.uint64), 4)


def test_non_finite_updates_are_refused():
    with pytest.raises(InvalidWeightsError):
        Quantizer(clip=1.0, max_silos=2).quantize([0.0, float("nan")])


def test_the_mask_generator_is_deterministic_per_seed_and_pair_seeds_are_symmetric():
    # GIVEN a shared secret and a round
    ctx = RoundContext("digits", 1, 2)
    shared = bytes(range(32))
    # WHEN u and v each derive their pair seed  THEN they agree; another round differs
    assert pair_seed(shared, ctx, "a", "b") == pair_seed(shared, ctx, "b", "a")
    assert pair_seed(shared, ctx, "a", "b") != pair_seed(
        shared, RoundContext("digits", 2, 2), "a", "b"
    )
    # AND PRG(seed) is the same stream each time, below 2^b, and its first 16 bytes are
    # AES-256 of the all-zero block under the all-zero key (the CTR block at counter 0):
    # dc95c078a2408989ad48a21492842087 (the known-answer value, FIPS-197 style)
    one, two = expand(bytes(32), 1000, 32), expand(bytes(32), 1000, 32)
    assert (one == two).all()
    assert int(one.max()) < 2**32
    block = bytes.fromhex("dc95c078a2408989ad48a21492842087")
    assert one[:4].tolist() == [int.from_bytes(block[i : i + 4], "little") for i in (0, 4, 8, 12)]
    # AND at b = 24 each element is the low 24 bits of the same words
    assert (expand(bytes(32), 1000, 24) == (one & np.uint32(2**24 - 1))).all()


def test_a_mask_longer_than_one_chunk_is_the_one_keystream():
    # GIVEN a seed and a length of 300 001 words (1.2 MB: past the 1 MiB chunk)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    # WHEN the mask is expanded, and the AES-256-CTR keystream taken in one call
    mask = expand(seed, 300_001, 32)
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = np.frombuffer(enc.update(bytes(4 * 300_001)), dtype="<u4")
    # THEN they are the same words, across the chunk boundary
    assert (mask == stream).all()
