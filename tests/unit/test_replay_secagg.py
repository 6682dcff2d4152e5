"""`fedasync replay` of a SecAgg round, from hand-built ledger events and objects.

The oracle, by hand: 3 silos, clip 1, a 32-bit ring: Q = floor((2^31 - 1) / 3) =
715827882 levels, step = 1 / Q. A recorded sum (3, -6, 4 · step) carries N = 4 examples,
so the round's model is w + (3, -6) / 4 = (1, 2) + (0.75, -1.5) = (1.75, 0.5).
"""

from __future__ import annotations

import json

import numpy as np

from fedasync.core import codec
from fedasync.core.config import TaskConfig
from fedasync.core.keys import global_key
from fedasync.core.replay import replay

STEP = 1 / 715_827_882
SUM_KEY = "t/server/secagg/00000000/sum.safetensors"


def ledger(sum_blob: bytes, recorded_sum_sha: str):
    sa = {"threshold": 2, "clip": 1.0}
    cfg = TaskConfig.parse({"task_name": "t", "clients": ["a", "b", "c"], "secure_aggregation": sa})
    initial = codec.encode({"w": np.array([1.0, 2.0], np.float32)})
    expected = codec.encode({"w": np.array([1.75, 0.5], np.float32)})
    sha = codec.sha256_bytes(expected)
    events = [
        {"kind": "task", "config": json.loads(cfg.model_dump_json()),
         "spec": [["w", [2], "float32"]],
         "initial": {"s3_key": global_key("t", 0), "sha256": codec.sha256_bytes(initial)}},
        {"kind": "round", "round_id": 0, "members": [], "version": 1, "sha256": sha,
         "secagg": {"survivors": ["a", "b"], "dropped": ["c"], "examples": 4,
                    "sum_sha256": recorded_sum_sha}},
        {"kind": "version", "version": 1, "sha256": sha},
    ]  # fmt: skip
    objects = {global_key("t", 0): initial, SUM_KEY: sum_blob}
    return events, objects, sha


def the_sum(values: list[float]) -> bytes:
    return codec.encode({"sum": np.array(values, np.float64)})


def test_a_secagg_round_is_rebuilt_from_its_recorded_sum():
    # GIVEN a ledger whose round 0 recorded the sum (3, -6, 4 step) and its SHA-256
    blob = the_sum([3.0, -6.0, 4 * STEP])
    events, objects, sha = ledger(blob, codec.sha256_bytes(blob))
    # WHEN it is replayed
    result = replay(events, objects.__getitem__)
    # THEN version 1 is (1.75, 0.5), the recorded bytes, from the 2 survivors
    assert result.ok, result.problems
    assert [(c.version, c.rebuilt) for c in result.checks] == [(1, sha)]
    assert result.applied == 2


def test_an_altered_sum_fails_the_replay_with_the_reason():
    # GIVEN the sum in the bucket is not the one whose SHA-256 the round recorded
    recorded = the_sum([3.0, -6.0, 4 * STEP])
    events, objects, _ = ledger(the_sum([3.0, -5.0, 4 * STEP]), codec.sha256_bytes(recorded))
    # WHEN it is replayed THEN it fails, naming the round, the object and the reason
    result = replay(events, objects.__getitem__)
    assert not result.ok
    assert any(
        p.startswith(f"SecAgg round 0: its sum {SUM_KEY!r} has SHA-256")
        and p.endswith("the sum was altered")
        for p in result.problems
    ), result.problems


def test_a_missing_sum_fails_the_replay_with_the_reason():
    # GIVEN the round's sum is not among the objects
    blob = the_sum([3.0, -6.0, 4 * STEP])
    events, objects, _ = ledger(blob, codec.sha256_bytes(blob))
    del objects[SUM_KEY]
    # WHEN it is replayed THEN it fails: the sum cannot be read, the round is not rebuilt
    result = replay(events, objects.__getitem__)
    assert not result.ok
    assert any(f"SecAgg round 0: its sum {SUM_KEY!r} cannot be read" in p for p in result.problems)
    assert "version 1 is recorded but was not rebuilt" in result.problems


RELEASE_KEY = "t/server/secagg/00000000/release.safetensors"


def central_ledger(release_blob: bytes, recorded_release_sha: str):
    """Central DP: survivors a and b (weight 1 each: N = 2), the sum (0.5, -1, 2 step)
    and its noised release (2, -4): w + (2, -4) / 2 = (1, 2) + (1, -2) = (2, 0)."""
    privacy = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0,
               "target_epsilon": 100.0, "delta": 1e-3}  # fmt: skip
    sa = {"threshold": 2, "clip": 1.0}
    cfg = TaskConfig.parse(
        {"task_name": "t", "clients": ["a", "b", "c"], "secure_aggregation": sa,
         "privacy": privacy}
    )  # fmt: skip
    initial = codec.encode({"w": np.array([1.0, 2.0], np.float32)})
    expected = codec.encode({"w": np.array([2.0, 0.0], np.float32)})
    sha = codec.sha256_bytes(expected)
    total = the_sum([0.5, -1.0, 2 * STEP])
    events = [
        {"kind": "task", "config": json.loads(cfg.model_dump_json()),
         "spec": [["w", [2], "float32"]],
         "initial": {"s3_key": global_key("t", 0), "sha256": codec.sha256_bytes(initial)}},
        {"kind": "round", "round_id": 0, "members": [], "version": 1, "sha256": sha,
         "secagg": {"survivors": ["a", "b"], "dropped": ["c"], "examples": 2,
                    "sum_sha256": codec.sha256_bytes(total),
                    "release_sha256": recorded_release_sha}},
        {"kind": "version", "version": 1, "sha256": sha},
    ]  # fmt: skip
    objects = {global_key("t", 0): initial, SUM_KEY: total, RELEASE_KEY: release_blob}
    return events, objects, sha


def a_release(values: list[float]) -> bytes:
    return codec.encode({"release": np.array(values, np.float64)})


def test_a_central_dp_secagg_round_is_rebuilt_from_its_recorded_release():
    # GIVEN a central-DP SecAgg round that recorded its release (2, -4) and its SHA-256
    blob = a_release([2.0, -4.0])
    events, objects, sha = central_ledger(blob, codec.sha256_bytes(blob))
    # WHEN it is replayed
    result = replay(events, objects.__getitem__)
    # THEN version 1 is (2, 0): the recorded bytes, from the release, not the sum
    assert result.ok, result.problems
    assert [(c.version, c.rebuilt) for c in result.checks] == [(1, sha)]


def test_an_altered_release_fails_the_replay_with_the_reason():
    # GIVEN the release in the bucket is not the one the round recorded
    recorded = a_release([2.0, -4.0])
    events, objects, _ = central_ledger(a_release([2.0, -3.0]), codec.sha256_bytes(recorded))
    # WHEN it is replayed THEN it fails, naming the round and the release
    result = replay(events, objects.__getitem__)
    assert not result.ok
    assert any(
        f"SecAgg round 0: its release {RELEASE_KEY!r} is not the one the round recorded" in p
        for p in result.problems
    ), result.problems
