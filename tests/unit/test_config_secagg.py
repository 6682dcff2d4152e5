"""The `secure_aggregation` option: its defaults, and the tasks it refuses (with why)."""

import pytest

from fedasync.core import config_secagg
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.core.secagg import quantize

FIVE = ["a", "b", "c", "d", "e"]


def parse(**fields):
    return TaskConfig.parse({"task_name": "t", "clients": FIVE, **fields})


def refusal(**fields) -> str:
    with pytest.raises(ConfigError) as info:
        parse(**fields)
    return info.value.message


def test_true_takes_the_defaults_and_the_threshold_is_the_smallest_majority():
    # GIVEN a sync task of 5 clients WHEN secure_aggregation is `true`
    cfg = parse(secure_aggregation=True)
    sa = cfg.secure_aggregation
    # THEN clip 1, ring 32 bits, 120-s phases, and t = 3 (5 // 2 + 1, by hand)
    assert sa is not None
    assert (sa.clip, sa.ring_bits, sa.phase_timeout_s, sa.neighbours) == (1.0, 32, 120, None)
    assert sa.quorum(5) == 3
    # AND the execution input carries what the ASL reads, the plain keys unchanged
    # (120-s phases checked every 15 s, the round_check_s default: 8 slices of 15 s)
    assert cfg.execution_input()["secure_aggregation"] == {
        "threshold": 3,
        "phase_timeout_s": 120,
        "phase_check_s": 15,
        "phase_ticks": 8,
    }


def test_off_is_absent_from_the_execution_input():
    # GIVEN a plain task and one with `false` THEN neither input has the key
    assert "secure_aggregation" not in parse().execution_input()
    assert parse(secure_aggregation=False).secure_aggregation is None


def test_an_async_task_is_refused():
    message = refusal(mode="async", secure_aggregation=True)
    assert (
        "secure aggregation needs sync rounds: an async task aggregates each update alone, "
        "and a sum of one is that update (use mode 'sync')"
    ) in message


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"strategy": "median"}, "strategy 'median'"),
        ({"strategy": "krum", "strategy_options": {"f": 1}}, "strategy 'krum'"),
        ({"clip_update_norm": 2.0}, "clip_update_norm"),
    ],
)
def test_robust_aggregation_is_refused(fields, what):
    message = refusal(secure_aggregation=True, **fields)
    assert (
        f"robust aggregation needs individual updates, which SecAgg hides: {what} cannot "
        "run with secure_aggregation"
    ) in message


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (6, "secure_aggregation.threshold 6 exceeds the 5 clients: no phase could reach it"),
        # 2 of 5 is no majority: 2 * 2 <= 5
        (
            2,
            "secure_aggregation.threshold 2 must be a strict majority of the 5 clients "
            "(at least 3)",
        ),
    ],
)
def test_a_threshold_outside_majority_and_silos_is_refused(threshold, expected):
    assert expected in refusal(secure_aggregation={"threshold": threshold})


def test_threshold_one_is_refused_by_its_bound():
    assert "secure_aggregation.threshold" in refusal(secure_aggregation={"threshold": 1})


def test_secagg_plus_majority_is_per_neighbourhood():
    # GIVEN 5 clients and k = 2 neighbours: a neighbourhood of 3, majority 2 (by hand)
    assert parse(secure_aggregation={"neighbours": 2}).secure_aggregation.quorum(5) == 2
    # THEN t = 3 is the whole neighbourhood (allowed), and k = 5 is no neighbour graph
    parse(secure_aggregation={"neighbours": 2, "threshold": 3})
    assert "neighbours 5 must be below the 5 clients" in refusal(
        secure_aggregation={"neighbours": 5}
    )


def test_a_ring_too_small_for_the_sum_is_refused():
    # GIVEN ring_bits 16 and 5 silos: Q = (2^15 - 1) // 5 = 6553 >= 4096 -> accepted
    parse(secure_aggregation={"ring_bits": 16})
    # WHEN 9 silos share a 16-bit ring: 9 x 4096 = 36864 >= 2^15 = 32768 -> refused
    nine = [f"s{i}" for i in range(9)]
    with pytest.raises(ConfigError) as info:
        TaskConfig.parse(
            {"task_name": "t", "clients": nine, "secure_aggregation": {"ring_bits": 16}}
        )
    assert (
        "secure_aggregation.ring_bits 16 cannot hold the sum of 9 updates with 12 fraction "
        "bits: n x 2^12 = 36864 must be below 2^(ring_bits - 1) = 32768"
    ) in info.value.message


def test_the_ring_bounds_are_the_quantisers():
    assert (config_secagg.MIN_RING_BITS, config_secagg.MAX_RING_BITS) == (
        quantize.MIN_RING_BITS,
        quantize.MAX_RING_BITS,
    )


def central(clip_norm: float) -> dict:
    privacy = {"mode": "central", "clip_norm": clip_norm, "noise_multiplier": 1.0}
    return privacy | {"target_epsilon": 10.0, "delta": 1e-5}


def test_central_dp_runs_on_the_unmasked_sum_when_the_ring_range_covers_the_clip_norm():
    # GIVEN central DP with clip_norm C = 1 and a SecAgg range R = 1 (R >= C)
    # WHEN the task is parsed  THEN it is accepted, with the ring's range
    cfg = parse(secure_aggregation={"clip": 1.0}, privacy=central(1.0))
    assert cfg.privacy is not None and cfg.secure_aggregation is not None
    assert cfg.secure_aggregation.clip == cfg.privacy.clip_norm == 1.0


def test_central_dp_with_a_ring_range_below_the_clip_norm_is_refused_with_why():
    # GIVEN C = 2 and R = 1: a clipped delta's coordinate may reach 2, outside [-1, 1]
    # WHEN it is parsed  THEN it is refused, naming both and the reason
    message = refusal(secure_aggregation={"clip": 1.0}, privacy=central(2.0))
    assert "secure_aggregation.clip 1 must be at least privacy.clip_norm 2" in message
    assert "quantiser's range" in message


def test_local_dp_and_fedprox_are_accepted_with_secure_aggregation():
    local = central(1.0) | {"mode": "local"}
    assert parse(secure_aggregation=True, privacy=local).privacy.mode == "local"
    assert parse(secure_aggregation=True, proximal_mu=0.1).proximal_mu == 0.1


def test_rounds_are_bounded_by_the_history_a_secagg_round_takes():
    # GIVEN 120-s phases checked every 15 s: 8 slices; a round at worst 4 + 5 x (10 + 10 x 8)
    # = 454 events, so (25000 - 20) // 454 = 55 rounds fit one execution (by hand)
    parse(secure_aggregation=True, rounds=55)
    assert (
        "rounds 56 exceeds 55: a SecAgg round of 5 phases of 8 check(s) each takes up to 454"
        in (refusal(secure_aggregation=True, rounds=56))
    )


def test_identities_must_be_clients_and_ed25519_keys():
    key = "A" * 43 + "="  # base64 of 32 zero-ish bytes: a well-formed public key's length
    parse(secure_aggregation={"identities": {"a": key}})
    assert "identities names ['z'], not clients of the task" in refusal(
        secure_aggregation={"identities": {"z": key}}
    )
    assert "identities['a'] is not a base64 Ed25519 public key (32 raw bytes)" in refusal(
        secure_aggregation={"identities": {"a": "AAAA"}}
    )
