"""Differential privacy: the accountant, the task's privacy configuration, its budget.

The mechanism is the Gaussian mechanism on a sum of clipped deltas (DP-FedAvg, McMahan
et al. 2018): each silo's delta is clipped to L2 norm `C` over the whole model
(`fedasync.core.clipping`), and `N(0, (z·C)²)` is added to every coordinate of the sum
(`fedasync.core.noise`); `z` is the noise multiplier. One such noised sum reaching the
global model is one *release*: a sync round, a FedBuff flush, a FedAsync absorbed update.

`epsilon` composes `releases` Gaussian mechanisms of multiplier `z` with Google's
`dp-accounting` (RDP, Mironov 2017; or PLD, Meiser & Mohammadi 2018 / Doroshenko et al.
2022). No amplification by sampling is claimed: every silo that is asked takes part.
The neighbouring relation is one silo's whole contribution (add/remove one silo, which
for a sum clipped to `C` is the same Gaussian curve as replacing its delta by zero):
the bound is per silo, so it holds for every example of that silo at once.

The weighting of each strategy and its sensitivity: `fedasync.core.sensitivity`.
`dp-accounting` (scipy, mpmath) is imported on first use, not with this module: the
wire messages import the configuration model, and most processes never account.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from fedasync.core.errors import ConfigError

Accountant = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
# The search for the largest affordable number of releases stops here: a budget that
# allows a million Gaussian releases is reported as a million (`releases_within`).
MAX_RELEASES = 1_000_000


def _check_inputs(noise_multiplier: float, delta: float, accountant: str) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(
            f"noise_multiplier must be a finite number > 0 (the Gaussian noise's standard "
            f"deviation in units of the clip norm), got {noise_multiplier!r}; z = 0 is no "
            "privacy at all"
        )
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"delta must lie strictly between 0 and 1, got {delta!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant {accountant!r} is not one of {list(ACCOUNTANTS)}")


def epsilon(noise_multiplier: float, releases: int, delta: float, accountant: str = "rdp") -> float:
    """ε at `delta` after `releases` Gaussian releases of noise multiplier `z`.

    Exactly `dp-accounting`'s answer for `SelfComposedDpEvent(GaussianDpEvent(z),
    releases)` with the accountant's default parameters (RDP: its default orders; PLD:
    a value discretisation interval of 1e-4). 0 releases spend nothing: 0.0."""
    accountant = accountant.lower() if isinstance(accountant, str) else accountant
    _check_inputs(noise_multiplier, delta, accountant)
    count = _count(releases)
    if count == 0:
        return 0.0
    return _epsilon(float(noise_multiplier), count, float(delta), accountant)


def _count(releases: object) -> int:
    """An integer >= 0 (a numpy integer, or a float with an integral value, too)."""
    if isinstance(releases, float) and releases.is_integer():
        releases = int(releases)
    try:
        count = operator.index(releases)  # type: ignore[arg-type]
    except TypeError:
        count = -1
    if isinstance(releases, bool) or count < 0:
        raise ValueError(f"releases must be an integer >= 0, got {releases!r}")
    return count


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, releases: int, delta: float, accountant: str) -> float:
    # pure in its arguments, and a PLD composition costs seconds: remembered
    import dp_accounting
    from dp_accounting import pld, rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), releases
    )
    spent = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    spent.compose(event)
    return float(spent.get_epsilon(delta))


def releases_within(
    noise_multiplier: float, target_epsilon: float, delta: float, accountant: str = "rdp"
) -> int:
    """The largest number of releases whose ε at `delta` is <= `target_epsilon`.

    0 when a single release already costs more. ε grows with the number of releases,
    so the answer is found by search: doubling, then bisection, on the accountant itself
    (RDP costs milliseconds a call). A PLD composition costs about a second, so PLD
    starts from the tight analytic ε of the composed Gaussian (n releases of `z` are one
    of `z/√n`, Balle & Wang 2018) and confirms the answer with the PLD accountant:
    releases `n` within the target and `n + 1` beyond it. Capped at `MAX_RELEASES`."""
    accountant = accountant.lower() if isinstance(accountant, str) else accountant
    _check_inputs(noise_multiplier, delta, accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")

    def within(n: int) -> bool:
        return epsilon(noise_multiplier, n, delta, accountant) <= target_epsilon

    if accountant == "pld":
        guess = _largest(lambda n: _analytic(noise_multiplier, n, delta) <= target_epsilon)
        return _confirm(within, guess)
    return _largest(within)


def _analytic(noise_multiplier: float, releases: int, delta: float) -> float:
    import dp_accounting

    return float(dp_accounting.get_epsilon_gaussian(noise_multiplier / math.sqrt(releases), delta))


def _largest(test: Callable[[int], bool]) -> int:
    """The largest n in [0, MAX_RELEASES] with test(n), for a monotone predicate."""
    if not test(1):
        return 0
    low, high = 1, 2
    while high <= MAX_RELEASES and test(high):
        low, high = high, high * 2
    if high > MAX_RELEASES:
        if test(MAX_RELEASES):
            return MAX_RELEASES
        high = MAX_RELEASES
    while high - low > 1:  # within(low), not within(high)
        middle = (low + high) // 2
        low, high = (middle, high) if test(middle) else (low, middle)
    return low


def _confirm(within: Callable[[int], bool], guess: int, steps: int = 8) -> int:
    """Walk from `guess` to the exact boundary of `within`; bisect if it is far."""
    n = guess
    for _ in range(steps):
        if n > 0 and not within(n):
            n -= 1
        elif n < MAX_RELEASES and within(n + 1):
            n += 1
        else:
            return n
    return _largest(within)


def noise_std(clip_norm: float, noise_multiplier: float) -> float:
    """Per-coordinate standard deviation of the noise on the SUM of clipped deltas: z·C.

    The strategy's normaliser (1/m, α_t, η/Σw: `fedasync.core.sensitivity`) is applied
    to the noised sum afterwards, so the noise in the global model is `scale·z·C`."""
    for name, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(noise_multiplier) * float(clip_norm)


def _message(field: str, value: object, expected: str) -> str:
    return f"privacy.{field} must be {expected}, got {value!r}"


class PrivacyConfig(BaseModel):
    """`privacy:` of a task: who adds the noise, how much, and the budget it may spend.

    mode: `central` (the aggregator clips each update and noises their sum: the silos
    trust the server with their raw updates) or `local` (each silo clips and noises its
    own update before upload: the server never sees an unnoised one). clip_norm `C`: the
    L2 bound on one silo's delta over the whole model. noise_multiplier `z`: the noise's
    standard deviation is `z·C`. target_epsilon: the task stops before a release would
    take ε past it, at `delta`. accountant: `rdp` or `pld` (tighter, slower)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["central", "local"]
    clip_norm: float
    noise_multiplier: float
    target_epsilon: float
    delta: float
    accountant: Accountant = "rdp"

    @field_validator("clip_norm", "noise_multiplier", "target_epsilon")
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        name = info.field_name or "value"
        if not (math.isfinite(value) and value > 0):
            raise ValueError(_message(name, value, "a finite number > 0"))
        return value

    @field_validator("delta")
    @classmethod
    def _a_probability(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 < value < 1):
            raise ValueError(
                _message("delta", value, "strictly between 0 and 1 (and below 1/N_examples)")
            )
        return value

    def epsilon_after(self, releases: int) -> float:
        """ε spent once `releases` releases have been made under this configuration."""
        return epsilon(self.noise_multiplier, releases, self.delta, self.accountant)

    def releases_allowed(self) -> int:
        """How many releases `target_epsilon` buys (see `releases_within`)."""
        return releases_within(
            self.noise_multiplier, self.target_epsilon, self.delta, self.accountant
        )

    def allows_release(self, releases_done: int) -> bool:
        """May one more release be made after `releases_done` without passing the target?"""
        return self.epsilon_after(releases_done + 1) <= self.target_epsilon


def check_budget(cfg: PrivacyConfig, total_examples: int) -> int:
    """Refuse a configuration that cannot protect `total_examples` examples, or that
    buys no release at all; otherwise return the number of releases it allows.

    δ is the probability that the ε guarantee fails outright; at δ >= 1/N a mechanism
    that publishes one example in N verbatim would satisfy it. The usual rule
    (Dwork & Roth 2014, §2.3) is δ well below 1/N; it is enforced as δ < 1/N."""
    if total_examples < 1:
        raise ConfigError(
            f"privacy needs the number of training examples to check delta against; got "
            f"{total_examples}",
            reason="privacy_delta",
        )
    if cfg.delta * total_examples >= 1:
        raise ConfigError(
            f"privacy.delta {cfg.delta:g} is not below 1/N_examples = 1/{total_examples} "
            f"= {1 / total_examples:.3g}: at that delta the guarantee allows one example in "
            f"{total_examples} to be published as is; choose delta < {1 / total_examples:.3g} "
            "(e.g. 1/N^1.1 or 1e-5 or smaller)",
            reason="privacy_delta",
        )
    allowed = cfg.releases_allowed()
    if allowed == 0:
        one = cfg.epsilon_after(1)
        raise ConfigError(
            f"privacy budget allows no release: one release with noise_multiplier "
            f"{cfg.noise_multiplier:g} already costs epsilon {one:.4g} at delta "
            f"{cfg.delta:g} ({cfg.accountant}), above target_epsilon {cfg.target_epsilon:g}; "
            "raise noise_multiplier or target_epsilon",
            reason="privacy_budget",
        )
    return allowed


def central_dp(cfg: object) -> bool:
    """Whether a task (any object with a `privacy` attribute) runs central DP."""
    privacy = getattr(cfg, "privacy", None)
    return isinstance(privacy, PrivacyConfig) and privacy.mode == "central"
