"""A task's `secure_aggregation` option (docs/secagg.md): its parameters and its refusals.

`secure_aggregation: true` takes the defaults below; a mapping sets them. What is checked
(`check_secure_aggregation`, called by `TaskConfig`):
- sync rounds only: an async task aggregates each update alone, and a sum of one update
  is that update;
- FedAvg only, without per-update clipping: a robust rule (median, trimmed mean, Krum)
  and `clip_update_norm` need to see individual updates, which SecAgg hides;
- central DP: the silos clip their deltas to privacy.clip_norm (the server cannot), and
  the quantiser's range must cover it (clip >= clip_norm); the server noises the sum;
- the threshold t: 2 <= t <= the silos that take part, and a strict majority of them
  (t > n/2; of each neighbourhood of k + 1 silos with SecAgg+): with a majority, no two
  disjoint groups of t silos exist, so a server telling two groups different survivor
  sets cannot collect both secrets of any silo (docs/secagg.md, "Choice of t");
- the ring: the sum of n quantised coordinates must fit it with some resolution left. The
  quantiser gives each coordinate Q = floor((2^(b-1) - 1) / n) levels per side (so
  n·Q < 2^(b-1): no overflow by construction, `Quantizer`); the option is refused when
  Q < 2^MIN_FRACTION_BITS, i.e. when n · 2^MIN_FRACTION_BITS >= 2^(b-1): the step
  clip / Q would then be coarser than clip / 4096, which no model survives.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fedasync.core.config_limits import EVENTS_AROUND_ROUNDS, SFN_HISTORY_EVENTS

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig

# the quantiser's bounds (fedasync.core.secagg.quantize; equal, tested), not imported so
# that reading a config never loads the cryptography package
MIN_RING_BITS, MAX_RING_BITS = 16, 62
MIN_FRACTION_BITS = 12
DEFAULT_PHASE_TIMEOUT_S = 120


class SecureAggregation(BaseModel):
    """The parameters of SecAgg (Bonawitz et al. 2017) on a sync task's rounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Shamir threshold and every phase's quorum; default: the smallest strict majority
    threshold: int | None = Field(default=None, ge=2)
    # each coordinate of a silo's input (num_examples x delta, docs/secagg.md) is clipped
    # to [-clip, clip] before quantising
    clip: float = Field(default=1.0, gt=0.0, le=1e12, allow_inf_nan=False)
    ring_bits: int = Field(default=32, ge=MIN_RING_BITS, le=MAX_RING_BITS)
    phase_timeout_s: int = Field(default=DEFAULT_PHASE_TIMEOUT_S, ge=1, le=86_400)
    # SecAgg+ (Bell et al. 2020): mask with k neighbours of a Harary graph, not everyone
    neighbours: int | None = Field(default=None, ge=2)
    # each silo's Ed25519 identity (raw public key, base64), registered out of band: every
    # SecAgg message is checked against it; a silo without one is refused (secagg_forged)
    identities: dict[str, str] = Field(default_factory=dict)

    def quorum(self, silos: int) -> int:
        """t: the threshold set, else the smallest strict majority of who masks together."""
        group = silos if self.neighbours is None else min(silos, self.neighbours + 1)
        return self.threshold if self.threshold is not None else max(2, group // 2 + 1)


def parse_secure_aggregation(value: object) -> object:
    """`true` is the defaults, `false` (or null) is off, a mapping is validated as is."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


def check_secure_aggregation(cfg: TaskConfig, strategy: str, *, central_dp: bool) -> None:
    """Raise ValueError (the config's error) when the task's secure_aggregation cannot
    run on it (`strategy`: the resolved one)."""
    sa, mode, silos = cfg.secure_aggregation, cfg.mode, len(cfg.clients)
    clip_update_norm = cfg.clip_update_norm
    if sa is None:
        return
    if mode != "sync":
        raise ValueError(
            "secure aggregation needs sync rounds: an async task aggregates each update "
            "alone, and a sum of one is that update (use mode 'sync')"
        )
    if strategy != "fedavg" or clip_update_norm is not None:
        what = f"strategy {strategy!r}" if strategy != "fedavg" else "clip_update_norm"
        raise ValueError(
            f"robust aggregation needs individual updates, which SecAgg hides: {what} "
            "cannot run with secure_aggregation (use strategy 'fedavg' without "
            "clip_update_norm; bound each coordinate with secure_aggregation.clip)"
        )
    privacy = cfg.privacy
    if central_dp and privacy is not None and sa.clip < privacy.clip_norm:
        raise ValueError(
            f"secure_aggregation.clip {sa.clip:g} must be at least privacy.clip_norm "
            f"{privacy.clip_norm:g}: under central DP each silo clips its delta to L2 norm "
            "clip_norm before quantising, so one coordinate may reach clip_norm, and the "
            "quantiser's range [-clip, clip] must cover it"
        )
    _check_threshold(sa, silos)
    _check_ring(sa, silos)
    _check_identities(sa, cfg.clients)
    _check_history(sa, cfg.rounds, cfg.round_check_s)


# Per SecAgg round in the execution's history (fedasync/core/config_limits.py counts the
# same way): a phase closed on time is SecAggPhase 6 + SecAggIsPhaseClosed 2 +
# SecAggNextPhase (or SecAggNextRound) 2; each slice it waits adds SecAggCountTick 2 +
# SecAggIsPhaseDue 2 + a wait 6; plus SecAggMoreRounds 2 + SecAggOpenRound 2 per round.
EVENTS_PER_PHASE, EVENTS_PER_PHASE_TICK, EVENTS_PER_SECAGG_ROUND = 10, 10, 4


def _check_history(sa: SecureAggregation, rounds: int, check_s: int) -> None:
    ticks = -(-sa.phase_timeout_s // min(check_s, sa.phase_timeout_s))
    worst = EVENTS_PER_SECAGG_ROUND + 5 * (EVENTS_PER_PHASE + EVENTS_PER_PHASE_TICK * ticks)
    most = (SFN_HISTORY_EVENTS - EVENTS_AROUND_ROUNDS) // worst
    if rounds > most:
        raise ValueError(
            f"rounds {rounds} exceeds {most}: a SecAgg round of 5 phases of {ticks} "
            f"check(s) each takes up to {worst} of the execution's {SFN_HISTORY_EVENTS} "
            "history events; check less often (round_check_s) or run the rest as a new task"
        )


def _check_identities(sa: SecureAggregation, clients: tuple[str, ...]) -> None:
    strangers = sorted(set(sa.identities) - set(clients))
    if strangers:
        raise ValueError(
            f"secure_aggregation.identities names {strangers}, not clients of the task"
        )
    for client_id, text in sa.identities.items():
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                f"secure_aggregation.identities[{client_id!r}] is not a base64 Ed25519 "
                "public key (32 raw bytes)"
            )


def _check_threshold(sa: SecureAggregation, silos: int) -> None:
    if sa.neighbours is not None and sa.neighbours >= silos:
        raise ValueError(
            f"secure_aggregation.neighbours {sa.neighbours} must be below the {silos} "
            "clients (SecAgg+ masks with a few neighbours; omit it to mask with everyone)"
        )
    group = silos if sa.neighbours is None else sa.neighbours + 1
    t = sa.quorum(silos)
    where = f"the {silos} clients" if sa.neighbours is None else f"a neighbourhood of {group}"
    if t > group:
        raise ValueError(
            f"secure_aggregation.threshold {t} exceeds {where}: no phase could reach it"
        )
    if 2 * t <= group or t < 2:
        raise ValueError(
            f"secure_aggregation.threshold {t} must be a strict majority of {where} "
            f"(at least {max(2, group // 2 + 1)}): with fewer, two disjoint groups of t "
            "silos could each be told a different survivor set"
        )


def _check_ring(sa: SecureAggregation, silos: int) -> None:
    levels = ((1 << (sa.ring_bits - 1)) - 1) // silos
    if levels < 1 << MIN_FRACTION_BITS:
        raise ValueError(
            f"secure_aggregation.ring_bits {sa.ring_bits} cannot hold the sum of {silos} "
            f"updates with {MIN_FRACTION_BITS} fraction bits: n x 2^{MIN_FRACTION_BITS} "
            f"= {silos << MIN_FRACTION_BITS} must be below 2^(ring_bits - 1) = "
            f"{1 << (sa.ring_bits - 1)} (use more ring_bits)"
        )


def secagg_input(sa: SecureAggregation | None, silos: int, check_s: int) -> dict[str, object]:
    """The execution input's part for SecAgg (read by the ASL's Choice and its phase
    waits); a plain task has none, so its input stays exactly as it was. A phase's wait is
    cut like a round's (`TaskConfig.round_clock`): `phase_ticks` slices of `phase_check_s`,
    at most the task's `round_check_s` each, covering `phase_timeout_s`."""
    if sa is None:
        return {}
    check, ticks = phase_clock(sa, check_s)
    return {
        "secure_aggregation": {
            "threshold": sa.quorum(silos),
            "phase_timeout_s": sa.phase_timeout_s,
            "phase_check_s": check,
            "phase_ticks": ticks,
        }
    }


def phase_clock(sa: SecureAggregation, check_s: int) -> tuple[int, int]:
    """(seconds per slice, slices per phase) of a phase's wait (`secagg_input`)."""
    ticks = -(-sa.phase_timeout_s // min(check_s, sa.phase_timeout_s))
    return -(-sa.phase_timeout_s // ticks), ticks
