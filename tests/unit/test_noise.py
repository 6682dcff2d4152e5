"""CSPRNG Gaussian noise (fedasync.core.noise) and the noised aggregate's statistics.

Statistical tolerances are stated and not tuned: each test draws from a fixed test key
(the same draws on every run, so no flake), and its bounds are two-sided intervals
that a correct N(0, σ²) sampler would leave with probability 1e-6 (chi-square for
the variance, normal for the mean). A σ off by 1% falls outside (the interval is ±0.55% of σ at 400 000 draws).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from scipy import stats
from structlog.testing import capture_logs

from fedasync.core.clipping import clip_update
from fedasync.core.dpstep import clipped_sum, noised_step
from fedasync.core.noise import CHUNK_NORMALS, SecureGaussian, add_noise
from fedasync.core.privacy import noise_std
from fedasync.core.sensitivity import fedavg_release, fedbuff_release

TEST_KEY = hashlib.sha256(b"fedasync test key: never a real one").digest()
ALPHA = 1e-6  # probability that a correct sampler falls outside an interval below


def _std_interval(sigma: float, n: int) -> tuple[float, float]:
    """Where a sample std of n N(0, sigma²) draws lies with probability 1 - ALPHA."""
    low = stats.chi2.ppf(ALPHA / 2, n - 1)
    high = stats.chi2.ppf(1 - ALPHA / 2, n - 1)
    return sigma * math.sqrt(low / (n - 1)), sigma * math.sqrt(high / (n - 1))


def _mean_bound(sigma: float, n: int) -> float:
    return float(stats.norm.ppf(1 - ALPHA / 2)) * sigma / math.sqrt(n)


def test_standard_normals_have_mean_0_and_std_1_and_pass_a_normality_test() -> None:
    # GIVEN a generator with the test key
    rng = SecureGaussian(TEST_KEY)
    # WHEN 400 000 standard normals are drawn
    n = 400_000
    draws = rng.standard_normal(n)
    # THEN the sample std is within the chi-square interval, the mean within its bound,
    # and a Kolmogorov-Smirnov test against N(0, 1) does not reject at 1e-6
    low, high = _std_interval(1.0, n)
    assert low <= float(np.std(draws, ddof=1)) <= high
    assert abs(float(np.mean(draws))) <= _mean_bound(1.0, n)
    assert stats.kstest(draws, "norm").pvalue > ALPHA


def test_uniforms_are_in_the_open_unit_interval_and_flat() -> None:
    # GIVEN the test key WHEN 1 000 000 uniforms are drawn
    u = SecureGaussian(TEST_KEY).uniform(1_000_000)
    # THEN none is 0 or 1, and a chi-square test over 100 equal bins does not reject at 1e-6
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    counts, _ = np.histogram(u, bins=100, range=(0.0, 1.0))
    assert stats.chisquare(counts).pvalue > ALPHA


def test_the_same_key_gives_the_same_stream_and_a_fresh_key_another() -> None:
    # GIVEN two generators on the test key and two on fresh OS keys
    # WHEN each draws 1000 normals
    same = [SecureGaussian(TEST_KEY).standard_normal(1000) for _ in range(2)]
    fresh = [SecureGaussian().standard_normal(1000) for _ in range(2)]
    # THEN the test key repeats itself, and fresh keys do not repeat each other
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(fresh[0], fresh[1])
    assert not np.array_equal(fresh[0], same[0])


def test_a_key_of_the_wrong_length_is_refused() -> None:
    # GIVEN / WHEN a 16-byte key / THEN a clear error
    with pytest.raises(ValueError, match="32 bytes"):
        SecureGaussian(bytes(16))


def test_a_statistical_generator_is_refused_as_the_noise_source() -> None:
    # GIVEN numpy's default generator (PCG64: predictable from its outputs)
    rng = np.random.default_rng(0)
    # WHEN it is offered to add_noise THEN it is refused, naming the reason
    with pytest.raises(TypeError, match="SecureGaussian"):
        add_noise({"w": np.zeros(3)}, 1.0, rng)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_noise_std_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    # GIVEN / WHEN a std of 0 (no privacy), < 0, NaN or Inf / THEN a clear error
    with pytest.raises(ValueError, match="noise std must be a finite number > 0"):
        add_noise({"w": np.zeros(3)}, bad, SecureGaussian(TEST_KEY))


def test_the_noised_aggregate_of_zero_updates_has_std_z_c_over_the_normaliser() -> None:
    # GIVEN 4 silos sending zero deltas of a 2-tensor model (200 000 coordinates),
    # C = 0.5, z = 1.2: the DP FedAvg round with equal weights, normaliser 1/4
    clip, z, silos = 0.5, 1.2, ["a", "b", "c", "d"]
    shape = {"dense/kernel": (400, 250), "dense/bias": (100_000,)}
    zero = {name: np.zeros(s, dtype=np.float32) for name, s in shape.items()}
    release = fedavg_release(clip, z, silos, [10, 200, 3000, 40_000])
    total = {name: np.zeros(s, dtype=np.float64) for name, s in shape.items()}
    for _ in silos:
        clipped, _ = clip_update(zero, clip)
        for name in total:
            total[name] += clipped[name]
    # WHEN the sum is noised with z·C and the normaliser applied after
    noised = add_noise(total, noise_std(clip, z), SecureGaussian(TEST_KEY))
    step = np.concatenate([release.scale * noised[name].ravel() for name in shape])
    # THEN the step's std is z·C/4 = 0.15 (hand computed) within the chi-square interval,
    # and its mean is 0 within its bound
    sigma = z * clip / 4
    assert release.step_std == pytest.approx(sigma)
    low, high = _std_interval(sigma, step.size)
    assert low <= float(np.std(step, ddof=1)) <= high
    assert abs(float(np.mean(step))) <= _mean_bound(sigma, step.size)


def test_the_fedbuff_step_noise_is_z_c_times_the_server_lr_over_the_weight_sum() -> None:
    # GIVEN a FedBuff flush of 3 zero deltas with staleness 0, 3, 8 (w = 1, 1/2, 1/3),
    # C = 1, z = 0.8, server_lr 0.6: normaliser 0.6 / (11/6) = 18/55 (hand computed)
    release = fedbuff_release(1.0, 0.8, ["a", "b", "c"], [0, 3, 8], 0.6, normalize="weights")
    assert release.scale == pytest.approx(18 / 55)
    # WHEN 300 000 coordinates of the noised sum are scaled by it
    noised = add_noise({"w": np.zeros(300_000)}, noise_std(1.0, 0.8), SecureGaussian(TEST_KEY))
    step = release.scale * noised["w"]
    # THEN the std is 0.8 · 18/55 within the chi-square interval
    low, high = _std_interval(0.8 * 18 / 55, step.size)
    assert low <= float(np.std(step, ddof=1)) <= high


def test_a_tensor_larger_than_a_chunk_is_noised_whole_and_keeps_its_dtype() -> None:
    # GIVEN a float32 tensor of more than one chunk of draws, and a float16 one
    sums = {
        "big": np.zeros(CHUNK_NORMALS + 12_345, dtype=np.float32),
        "half": np.zeros((30, 30), dtype=np.float16),
    }
    # WHEN noised with std 2
    noised = add_noise(sums, 2.0, SecureGaussian(TEST_KEY))
    # THEN every coordinate got noise (none left at 0, the chunk seam included), the
    # dtypes and shapes are kept, and the big tensor's std is 2 within its interval
    assert noised["big"].dtype == np.float32 and noised["half"].dtype == np.float16
    assert noised["half"].shape == (30, 30)
    assert np.count_nonzero(noised["big"]) == noised["big"].size
    low, high = _std_interval(2.0, noised["big"].size)
    assert low <= float(np.std(noised["big"].astype(np.float64), ddof=1)) <= high


def test_no_log_line_and_no_attribute_holds_the_noise_or_the_key() -> None:
    # GIVEN a generator on the test key and a zero sum (so the noised sum IS the noise)
    rng = SecureGaussian(TEST_KEY)
    # WHEN noise is added with every structlog line captured
    with capture_logs() as logged:
        noised = add_noise({"w": np.zeros(64)}, 1.0, rng)
    noise = noised["w"]
    # THEN no line was written at all (nothing to leak), the repr does not show the key,
    # and no attribute of the generator holds the key's bytes or its hex
    assert logged == []
    shown = repr(rng) + repr(vars(rng))
    assert TEST_KEY.hex() not in shown and repr(TEST_KEY) not in shown
    assert all(TEST_KEY not in bytes(v) for v in vars(rng).values() if isinstance(v, bytes))
    assert all(f"{x:.6f}" not in shown for x in noise[:8])


def test_the_clipped_sum_is_hand_computable_and_replayable() -> None:
    # GIVEN deltas (3, 4) and (0, 10) with weights 1 and 0.5, C = 1
    deltas = [{"w": np.array([3.0, 4.0], dtype=np.float32)}, {"w": np.array([0.0, 10.0])}]
    # WHEN summed clipped THEN (0.6, 0.8) + 0.5 * (0, 1) = (0.6, 1.3), by hand, twice alike
    total = clipped_sum(deltas, [1.0, 0.5], 1.0)
    np.testing.assert_allclose(total["w"], [0.6, 1.3], rtol=1e-6)
    np.testing.assert_array_equal(total["w"], clipped_sum(deltas, [1.0, 0.5], 1.0)["w"])


def test_noised_step_of_zero_deltas_has_std_z_c_over_the_normaliser() -> None:
    # GIVEN a DP FedAvg round of 5 silos with zero deltas of 250 000 weights, C = 2, z = 0.7
    release = fedavg_release(2.0, 0.7, list("abcde"), [1, 2, 3, 4, 5])
    zeros = ({"w": np.zeros(250_000, dtype=np.float32)} for _ in range(5))
    # WHEN the step is made
    step = noised_step(zeros, release, 2.0, SecureGaussian(TEST_KEY))["w"]
    # THEN its std is z·C/5 = 0.28 (hand computed) within the chi-square interval, mean ~ 0
    low, high = _std_interval(0.28, step.size)
    assert low <= float(np.std(step, ddof=1)) <= high
    assert abs(float(np.mean(step))) <= _mean_bound(0.28, step.size)
