"""The DP accountant, the privacy configuration and its budget, and each strategy's
sensitivity (fedasync.core.privacy, fedasync.core.sensitivity).

Oracles: dp-accounting itself, called here through its public API by another path
than the code under test (`accountant.compose(event, count)`); the closed-form RDP
bound of a Gaussian (Mironov 2017); and the exact privacy curve of composed Gaussians
(μ-GDP, Dong, Roth & Su 2019: n releases of multiplier z are μ = √n/z), hand-coded
below with math.erfc.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedasync.core.clipping import clip_update
from fedasync.core.errors import ConfigError
from fedasync.core.privacy import (
    MAX_RELEASES,
    PrivacyConfig,
    check_budget,
    epsilon,
    noise_std,
    releases_within,
)
from fedasync.core.sensitivity import (
    fedasync_release,
    fedavg_release,
    fedbuff_release,
    silo_capped,
    sum_sensitivity,
)

POINTS = [  # (z, releases, delta): epsilons from about 1 to 40
    (1.0, 1, 1e-5),
    (1.1, 10, 1e-5),
    (2.0, 50, 1e-6),
    (4.0, 200, 1e-5),
    (0.8, 3, 1e-3),
    (10.0, 1000, 1e-8),
]
PLD_POINTS = [(1.0, 1, 1e-5), (2.0, 10, 1e-6), (5.0, 100, 1e-5)]  # a PLD costs ~1 s


def _library(z: float, releases: int, delta: float, accountant: str) -> float:
    spent = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    spent.compose(dp_accounting.GaussianDpEvent(z), releases)
    return float(spent.get_epsilon(delta))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _gdp_delta(eps: float, z: float, releases: int) -> float:
    """The exact δ(ε) of `releases` Gaussian releases of multiplier z (μ-GDP curve)."""
    mu = math.sqrt(releases) / z
    return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)


# ---------------------------------------------------------------- the accountant


@pytest.mark.parametrize(("z", "releases", "delta"), POINTS)
def test_rdp_epsilon_equals_dp_accountings_own(z: float, releases: int, delta: float) -> None:
    # GIVEN (z, releases, delta) WHEN epsilon is asked of the RDP accountant
    # THEN it is dp-accounting's RdpAccountant answer for the same composition
    assert epsilon(z, releases, delta, "rdp") == pytest.approx(
        _library(z, releases, delta, "rdp"), rel=1e-12
    )


@pytest.mark.parametrize(("z", "releases", "delta"), PLD_POINTS)
def test_pld_epsilon_equals_dp_accountings_own(z: float, releases: int, delta: float) -> None:
    # GIVEN (z, releases, delta) WHEN epsilon is asked of the PLD accountant
    # THEN it is dp-accounting's PLDAccountant answer for the same composition
    assert epsilon(z, releases, delta, "pld") == pytest.approx(
        _library(z, releases, delta, "pld"), rel=1e-12
    )


@pytest.mark.parametrize(("z", "releases", "delta"), POINTS)
def test_rdp_epsilon_is_within_the_hand_derived_gaussian_rdp_bound(
    z: float, releases: int, delta: float
) -> None:
    # GIVEN the RDP of one Gaussian release, alpha / (2 z²) (Mironov 2017, Prop. 7),
    # composed `releases` times, and the conversion eps <= rdp(alpha) + log(1/delta)/(alpha-1)
    # minimised over alpha by hand: alpha* = 1 + z·sqrt(2 log(1/delta) / n), so
    # eps <= n/(2z²) + sqrt(2 n log(1/delta)) / z
    n, log_inv = releases, math.log(1 / delta)
    bound = n / (2 * z * z) + math.sqrt(2 * n * log_inv) / z
    # WHEN / THEN the accountant's epsilon is no larger (it uses a tighter conversion)
    # and is still a valid bound: the exact curve's delta at that epsilon is <= delta
    eps = epsilon(z, releases, delta, "rdp")
    assert eps <= bound
    assert _gdp_delta(eps, z, releases) <= delta


@pytest.mark.parametrize(("z", "releases", "delta"), PLD_POINTS)
def test_pld_epsilon_is_the_exact_gaussian_curve_to_a_thousandth(
    z: float, releases: int, delta: float
) -> None:
    # GIVEN the exact privacy curve of composed Gaussians (mu-GDP, hand coded)
    eps = epsilon(z, releases, delta, "pld")
    # WHEN / THEN PLD's epsilon is valid (exact delta there <= delta, up to float error)
    # and tight: 0.001 less would not be (exact delta there > delta)
    assert _gdp_delta(eps, z, releases) <= delta * (1 + 1e-6)
    assert _gdp_delta(eps - 1e-3, z, releases) > delta


def test_one_release_at_z_1_costs_about_4_38_at_delta_1e_5() -> None:
    # GIVEN the Gaussian mechanism with sigma = sensitivity (z = 1) at delta 1e-5:
    # the analytic Gaussian mechanism (Balle & Wang 2018) gives eps = 4.3772 (4 digits)
    # WHEN / THEN PLD agrees to 4 digits and RDP is above it (looser), below 5.30 (hand bound)
    assert epsilon(1.0, 1, 1e-5, "pld") == pytest.approx(4.3772, abs=5e-4)
    assert 4.3772 < epsilon(1.0, 1, 1e-5, "rdp") < 0.5 + math.sqrt(2 * math.log(1e5))


def test_no_release_spends_nothing() -> None:
    # GIVEN / WHEN 0 releases / THEN epsilon is 0.0 in both accountants
    assert epsilon(1.0, 0, 1e-5, "rdp") == 0.0
    assert epsilon(1.0, 0, 1e-5, "pld") == 0.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1, 1e-5, "rdp"), "noise_multiplier must be a finite number > 0"),
        ((-1.0, 1, 1e-5, "rdp"), "noise_multiplier must be a finite number > 0"),
        ((math.nan, 1, 1e-5, "rdp"), "noise_multiplier must be a finite number > 0"),
        ((1.0, -1, 1e-5, "rdp"), "releases must be an integer >= 0"),
        ((1.0, 1.5, 1e-5, "rdp"), "releases must be an integer >= 0"),
        ((1.0, 1, 0.0, "rdp"), "delta must lie strictly between 0 and 1"),
        ((1.0, 1, 1.0, "rdp"), "delta must lie strictly between 0 and 1"),
        ((1.0, 1, 1e-5, "moments"), "accountant 'moments' is not one of"),
    ],
)
def test_bad_accountant_inputs_get_clear_errors(args: tuple, match: str) -> None:
    # GIVEN / WHEN an input outside the mechanism's domain / THEN a ValueError naming it
    with pytest.raises(ValueError, match=match):
        epsilon(*args)


# ---------------------------------------------------------------- releases_within


@pytest.mark.parametrize(
    ("z", "target", "delta", "accountant"),
    [
        (1.0, 10.0, 1e-5, "rdp"),
        (5.0, 10.0, 1e-5, "rdp"),
        (2.0, 3.0, 1e-6, "rdp"),
        (5.0, 10.0, 1e-5, "pld"),
        (2.0, 8.0, 1e-5, "pld"),
    ],
)
def test_releases_within_is_the_last_count_inside_the_target(
    z: float, target: float, delta: float, accountant: str
) -> None:
    # GIVEN a noise multiplier, a target and delta
    # WHEN the affordable number of releases is asked
    n = releases_within(z, target, delta, accountant)
    # THEN by dp-accounting itself, n releases are within the target and n + 1 are not
    assert n >= 1
    assert _library(z, n, delta, accountant) <= target < _library(z, n + 1, delta, accountant)


def test_a_target_below_one_release_buys_none() -> None:
    # GIVEN z = 0.5 at delta 1e-5: one release alone costs more than epsilon 1
    assert _library(0.5, 1, 1e-5, "rdp") > 1.0
    # WHEN / THEN no release is affordable
    assert releases_within(0.5, 1.0, 1e-5, "rdp") == 0


def test_a_budget_past_the_cap_reports_the_cap() -> None:
    # GIVEN z = 1000: a million releases still cost less than epsilon 10
    assert _library(1000.0, MAX_RELEASES, 1e-5, "rdp") <= 10.0
    # WHEN / THEN the documented cap is the answer
    assert releases_within(1000.0, 10.0, 1e-5, "rdp") == MAX_RELEASES


# ---------------------------------------------------------------- configuration

GOOD = {
    "mode": "central",
    "clip_norm": 1.0,
    "noise_multiplier": 1.1,
    "target_epsilon": 8.0,
    "delta": 1e-5,
}


def test_a_good_configuration_parses_with_rdp_by_default() -> None:
    # GIVEN / WHEN the five required fields / THEN a config with the rdp accountant
    cfg = PrivacyConfig.model_validate(GOOD)
    assert cfg.accountant == "rdp" and cfg.mode == "central"
    assert cfg.epsilon_after(3) == pytest.approx(_library(1.1, 3, 1e-5, "rdp"), rel=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"clip_norm": 0}, "privacy.clip_norm must be a finite number > 0, got 0"),
        ({"noise_multiplier": -1}, "privacy.noise_multiplier must be a finite number > 0"),
        ({"target_epsilon": float("inf")}, "privacy.target_epsilon must be a finite number"),
        ({"delta": 1.0}, "privacy.delta must be strictly between 0 and 1"),
        ({"delta": 0}, "privacy.delta must be strictly between 0 and 1"),
        ({"mode": "global"}, "mode"),
        ({"accountant": "moments"}, "accountant"),
        ({"sigma": 1.0}, "Extra inputs are not permitted"),
    ],
)
def test_bad_privacy_configurations_are_refused_with_the_reason(change: dict, match: str) -> None:
    # GIVEN a configuration with one bad field WHEN validated THEN the error names it
    with pytest.raises(ValidationError, match=match):
        PrivacyConfig.model_validate({**GOOD, **change})


def test_delta_at_or_above_one_over_n_examples_is_refused_with_the_reason() -> None:
    # GIVEN delta 1e-5 and 100 000 examples: delta = 1/N exactly
    cfg = PrivacyConfig.model_validate(GOOD)
    # WHEN the budget is checked THEN it is refused, saying why and what to choose
    with pytest.raises(ConfigError, match=r"not below 1/N_examples = 1/100000") as caught:
        check_budget(cfg, 100_000)
    assert caught.value.reason == "privacy_delta"
    # AND with 200 000 examples (delta above 1/N) as well; with 99 999 it is accepted
    with pytest.raises(ConfigError):
        check_budget(cfg, 200_000)
    assert check_budget(cfg, 99_999) >= 1


def test_a_budget_that_allows_no_release_is_refused_with_the_cost_of_one() -> None:
    # GIVEN z = 0.5 and target 1: one release costs more (dp-accounting says so)
    cfg = PrivacyConfig.model_validate({**GOOD, "noise_multiplier": 0.5, "target_epsilon": 1.0})
    one = _library(0.5, 1, 1e-5, "rdp")
    assert one > 1.0
    # WHEN / THEN refused, with that cost in the message
    with pytest.raises(ConfigError, match=f"already costs epsilon {one:.4g}") as caught:
        check_budget(cfg, 1000)
    assert caught.value.reason == "privacy_budget"


def test_a_good_budget_returns_its_number_of_releases() -> None:
    # GIVEN z = 1.1, target 8, delta 1e-5, 1000 examples
    cfg = PrivacyConfig.model_validate(GOOD)
    # WHEN checked THEN the count is the last one within the target (dp-accounting)
    n = check_budget(cfg, 1000)
    assert _library(1.1, n, 1e-5, "rdp") <= 8.0 < _library(1.1, n + 1, 1e-5, "rdp")
    assert cfg.allows_release(n - 1) and not cfg.allows_release(n)


# ---------------------------------------------------------------- sensitivity


def test_noise_std_is_z_times_c() -> None:
    # GIVEN C = 0.5, z = 1.2 WHEN / THEN std 0.6 on the sum (hand computed)
    assert noise_std(0.5, 1.2) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number > 0"):
        noise_std(0.5, 0.0)


def test_dp_fedavg_uses_equal_weights_or_capped_ones() -> None:
    # GIVEN a round of 3 silos with 10, 500, 5000 examples, C = 2, z = 1
    ids, counts = ["a", "b", "c"], [10, 500, 5000]
    # WHEN equal weights (the default) THEN w = 1, scale 1/3, the sum's sensitivity C
    equal = fedavg_release(2.0, 1.0, ids, counts)
    assert equal.weights == (1.0, 1.0, 1.0) and equal.scale == pytest.approx(1 / 3)
    assert equal.sum_sensitivity == 2.0 and equal.step_std == pytest.approx(2 / 3)
    # WHEN capped at 1000 examples THEN w = 0.01, 0.5, 1 and scale 1/1.51 (hand computed)
    capped = fedavg_release(2.0, 1.0, ids, counts, weight_cap=1000)
    assert capped.weights == pytest.approx((0.01, 0.5, 1.0))
    assert capped.scale == pytest.approx(1 / 1.51) and capped.sum_sensitivity == 2.0


def test_fedasync_release_sensitivity_is_alpha_t_times_c() -> None:
    # GIVEN alpha_t = 0.3, C = 1.5, z = 2 WHEN / THEN step sensitivity 0.45, step noise 0.9
    release = fedasync_release(1.5, 2.0, 0.3)
    assert release.step_sensitivity == pytest.approx(0.45)
    assert release.step_std == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"alpha_t must lie in \(0, 1\]"):
        fedasync_release(1.5, 2.0, 0.0)


def test_a_fedbuff_release_takes_each_silo_once_and_scales_its_noise_by_the_largest_weight():
    # GIVEN a buffer with silo 'a' in it twice
    # WHEN / THEN the release is refused: one contribution per silo per flush
    with pytest.raises(ValueError, match="each silo once"):
        fedbuff_release(1.0, 1.0, ["a", "a", "b"], [0, 0, 0], 1.0)
    # GIVEN silos a, b with staleness 3, 8 (w = 1/2, 1/3), C = 2, z = 1.5, server_lr 0.6
    by_k = fedbuff_release(2.0, 1.5, ["a", "b"], [3, 8], 0.6)
    by_w = fedbuff_release(2.0, 1.5, ["a", "b"], [3, 8], 0.6, normalize="weights")
    # THEN the sum's sensitivity is C * w_max = 1 and its noise z * C * w_max = 1.5
    assert by_k.weights == pytest.approx((0.5, 1 / 3))
    assert by_k.sum_sensitivity == pytest.approx(1.0) and by_k.noise_std == pytest.approx(1.5)
    # AND normalised by K = 2: scale 0.3, step sensitivity 0.3, step noise 0.45
    assert by_k.scale == pytest.approx(0.3) and by_k.step_std == pytest.approx(0.45)
    assert by_k.step_sensitivity == pytest.approx(0.3)
    # AND normalised by the weights (5/6): scale 0.72, step sensitivity 0.72, noise 1.08
    assert by_w.scale == pytest.approx(0.72) and by_w.step_std == pytest.approx(1.08)
    assert by_w.step_sensitivity == pytest.approx(0.72)
    # AND a sum that does take a silo twice would have sensitivity 2C, which silo_capped caps
    assert sum_sensitivity(1.0, ["a", "a", "b"], [1.0, 1.0, 1.0]) == 2.0
    assert silo_capped(["a", "a", "b"], [1.0, 1.0, 1.0]) == (0.5, 0.5, 1.0)
    assert silo_capped(["a", "b"], [0.7, 0.2]) == (0.7, 0.2)


@st.composite
def _buffers(draw: st.DrawFn) -> tuple[list[str], list[int], list[np.ndarray]]:
    size = draw(st.integers(min_value=1, max_value=6))
    ids = draw(st.lists(st.sampled_from("abcdef"), min_size=size, max_size=size, unique=True))
    staleness = draw(st.lists(st.integers(0, 20), min_size=size, max_size=size))
    scales = draw(st.lists(st.floats(0.0, 50.0), min_size=size, max_size=size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)  # test data only, not noise
    return ids, staleness, [s * rng.standard_normal(7) for s in scales]


@settings(max_examples=200, deadline=None)
@given(buffer=_buffers(), clip=st.floats(0.01, 10.0))
def test_removing_any_silo_moves_the_weighted_clipped_sum_by_at_most_its_sensitivity(
    buffer: tuple[list[str], list[int], list[np.ndarray]], clip: float
) -> None:
    # GIVEN any FedBuff buffer (each silo once, any staleness, deltas of any size)
    ids, staleness, deltas = buffer
    release = fedbuff_release(clip, 1.0, ids, staleness, 1.0)
    clipped = [clip_update({"w": d}, clip)[0]["w"] for d in deltas]
    total = sum(w * c for w, c in zip(release.weights, clipped, strict=True))
    for silo in set(ids):
        # WHEN one silo's deltas are replaced by zero
        without = sum(
            (w * c for w, c, i in zip(release.weights, clipped, ids, strict=True) if i != silo),
            start=np.zeros(7),
        )
        # THEN the sum moves by at most the release's sensitivity, which is at most C
        assert float(np.linalg.norm(total - without)) <= release.sum_sensitivity * (1 + 1e-9)
    assert release.sum_sensitivity <= clip * (1 + 1e-12)


def test_a_numpy_integer_count_and_an_upper_case_accountant_are_accepted() -> None:
    # GIVEN a release count held as a numpy integer (as a caller's array would give it)
    # WHEN / THEN it counts as that integer, and "RDP" names the rdp accountant
    assert epsilon(1.1, np.int64(10), 1e-5, "RDP") == epsilon(1.1, 10, 1e-5, "rdp")
