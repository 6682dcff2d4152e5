"""The silo's local DP bookkeeping (client/privacy.py): its count survives a restart,
and it keeps to the first privacy configuration it saw."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from client.privacy import LocalPrivacy, PrivacyBudgetExhaustedError, state_path
from fedasync.core.errors import ConfigError
from fedasync.core.noise import SecureGaussian
from fedasync.core.privacy import PrivacyConfig

KEY = hashlib.sha256(b"fedasync client privacy test key").digest()
CFG = PrivacyConfig(
    mode="local", clip_norm=1.0, noise_multiplier=2.0, target_epsilon=30.0, delta=1e-5
)


def epsilon(z: float, releases: int, delta: float) -> float:
    """dp-accounting's own epsilon (the oracle), through its public API."""
    spent = rdp.RdpAccountant()
    spent.compose(dp_accounting.GaussianDpEvent(z), releases)
    return float(spent.get_epsilon(delta))


def _privacy(path: Path | None, cfg: PrivacyConfig = CFG) -> LocalPrivacy:
    return LocalPrivacy(
        cfg, task_name="digits", state_path=path, rng_factory=lambda: SecureGaussian(KEY)
    )


def _models() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return {"w": np.full(100, 3.0, dtype=np.float32)}, {"w": np.zeros(100, dtype=np.float32)}


def test_a_restarted_silo_goes_on_counting_from_its_file(tmp_path: Path) -> None:
    # GIVEN a silo that released 2 updates with its count kept under its work dir
    path = state_path(tmp_path, "digits", "silo-a", "0f3a")
    first = _privacy(path)
    for _ in range(2):
        first.privatize(*_models())
    # WHEN the silo starts again on the same task
    again = _privacy(path)
    # THEN it knows its 2 releases and their epsilon (dp-accounting's)
    assert again.releases == 2
    assert again.epsilon == pytest.approx(epsilon(2.0, 2, 1e-5), rel=1e-12)


def test_a_changed_configuration_is_refused_on_restart_and_from_a_notice(tmp_path: Path) -> None:
    # GIVEN a silo that released once under z = 2
    path = tmp_path / "privacy.json"
    _privacy(path).privatize(*_models())
    weaker = CFG.model_copy(update={"noise_multiplier": 0.5})
    # WHEN a restart or a notice brings z = 0.5, or no privacy at all
    # THEN the silo refuses, naming the change
    with pytest.raises(ConfigError, match="privacy configuration changed") as caught:
        _privacy(path, weaker)
    assert caught.value.reason == "privacy_changed"
    running = _privacy(path)
    with pytest.raises(ConfigError, match="keeps to the first one"):
        running.check_same(weaker)
    with pytest.raises(ConfigError, match="to no privacy"):
        running.check_same(None)


def test_a_delta_not_below_one_over_the_silos_examples_is_refused() -> None:
    # GIVEN delta 1e-5 and a silo of 100 000 examples (delta = 1/n)
    # WHEN / THEN the silo will not release at it
    with pytest.raises(ConfigError, match="not below 1 over this silo's 100000 examples"):
        _privacy(None).check_examples(100_000)
    _privacy(None).check_examples(99_999)


def test_the_budget_is_enforced_before_the_release_that_would_pass_it() -> None:
    # GIVEN a target that buys exactly 2 releases at z = 2 (dp-accounting: eps(2) <= 3.5 < eps(3))
    assert epsilon(2.0, 2, 1e-5) <= 3.5 < epsilon(2.0, 3, 1e-5)
    silo = _privacy(None, CFG.model_copy(update={"target_epsilon": 3.5}))
    silo.privatize(*_models())
    silo.privatize(*_models())
    # WHEN a third is asked THEN it is refused, and the count stays at 2
    with pytest.raises(PrivacyBudgetExhaustedError, match="2 release\\(s\\) have spent"):
        silo.privatize(*_models())
    assert silo.releases == 2


def test_an_unreadable_count_is_refused_not_taken_for_zero(tmp_path: Path) -> None:
    # GIVEN a release count file that was cut short (a disk full, an editor)
    path = tmp_path / "privacy.json"
    path.write_text('{"releases": ')
    # WHEN the silo starts THEN it refuses rather than start its budget again from 0
    with pytest.raises(ConfigError, match="cannot be read") as caught:
        _privacy(path)
    assert caught.value.reason == "privacy_state"
