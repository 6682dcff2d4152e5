"""Central DP on a SecAgg round's unmasked sum, pure: the silo's clip, the server's noise.

Oracles by hand: a delta (3, 4) has norm 5; with C = 1 and a step of 0.01 over d = 2
coordinates, the silo clips to C − √2 · 0.01 / 2 = 1 − 0.0070710678..., i.e. the vector
(0.6, 0.8) · that. The noise's spread: a sample variance of d normals of spread σ is
σ² · χ²(d) / d; |s² / σ² − 1| < 6 · √(2 / d) fails with probability below 1e-8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedasync.core.noise import SecureGaussian
from fedasync.core.privacy import PrivacyConfig
from fedasync.core.secagg.central_dp import central_input, clip_bound, details, release
from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.quantize import Quantizer

PRIVACY = PrivacyConfig(
    mode="central", clip_norm=0.5, noise_multiplier=1.2, target_epsilon=10.0, delta=1e-5
)


def test_a_silo_clips_its_delta_below_c_by_the_rounding_worst_case_and_weighs_one():
    # GIVEN a delta (3, 4) (norm 5), C = 1, step 0.01
    x = central_input(np.array([3.0, 4.0]), 1.0, 0.01)
    # THEN it is (0.6, 0.8) · (1 − √2 · 0.005), then the weight 1 · step
    bound = 1 - math.sqrt(2) * 0.005
    np.testing.assert_allclose(x, [0.6 * bound, 0.8 * bound, 0.01], rtol=1e-15)
    # AND a delta inside the bound is sent as is
    np.testing.assert_array_equal(central_input(np.array([0.3, 0.4]), 1.0, 0.01), [0.3, 0.4, 0.01])


def test_what_one_silo_adds_to_the_quantised_sum_has_norm_at_most_c():
    # GIVEN a coarse ring (16 bits, 10 silos: step = 1 / 3276) and C = 0.05 over d = 10^4
    q = Quantizer(1.0, 10, 16)
    d, c_norm = 10_000, 0.05
    # WHEN a delta far outside C, every coordinate at a rounding tie's worst, is sent
    delta = np.full(d, 1.0)
    x = central_input(delta, c_norm, q.step)
    # THEN its quantised value (q · step, the delta part) has L2 norm at most C
    values = q.dequantize_sum(q.quantize(x), 1)
    assert float(np.linalg.norm(values[:-1])) <= c_norm
    # AND its weight quantises to exactly 1
    assert round(values[-1] / q.step) == 1


def test_a_clip_norm_the_rounding_alone_could_exceed_is_refused():
    # GIVEN C = 0.001 and d = 10^6 coordinates of step 0.01: √d · step / 2 = 5 > C
    with pytest.raises(SecAggError, match="below the quantisation's worst-case rounding"):
        clip_bound(0.001, 1_000_000, 0.01)


def test_the_release_adds_gaussian_noise_of_spread_z_c_to_every_coordinate():
    # GIVEN a zero sum of 200 000 coordinates, z = 1.2, C = 0.5 (σ = 0.6)
    total = np.zeros(200_000)
    # WHEN it is released
    noised = release(total, PRIVACY, SecureGaussian())
    # THEN the noise's sample variance is σ² within the chi-square interval, mean ~0
    sigma = 1.2 * 0.5
    ratio = float(np.mean(noised * noised)) / sigma**2
    assert abs(ratio - 1) < 6 * math.sqrt(2 / total.size)
    assert abs(float(np.mean(noised))) < 6 * sigma / math.sqrt(total.size)
    # AND the sum given is not changed in place, and two releases draw different noise
    assert not total.any()
    assert not np.array_equal(noised, release(total, PRIVACY, SecureGaussian()))


def test_the_release_refuses_a_statistical_generator():
    with pytest.raises(TypeError, match="SecureGaussian"):
        release(np.zeros(3), PRIVACY, np.random.default_rng(0))  # type: ignore[arg-type]


def test_the_round_records_its_dp_parameters_as_dp_fedavg_does():
    assert details(PRIVACY, 4) == {
        "clip_norm": 0.5, "noise_multiplier": 1.2, "noise_std": 0.6, "updates": 4,
    }  # fmt: skip
