"""SecAgg composed with central DP, local DP and FedProx, through the real client loop
(`run_client` silos, numpy trainer) on the embedded stack with the real ASL and handlers.

Oracles, computed here from the stated formulas (docs/secagg.md, "Composition"):
- central DP: each silo sends (clip(Δ_u), step), Δ_u clipped to L2 norm
  C − √d · step / 2; the unmasked sum is Σ clip(Δ_u) over U3 within |U3| · step / 2 per
  coordinate; the release is that sum + N(0, (z·C)²) per coordinate, and the new model
  w + release / |U3|;
- local DP: each silo sends n_u · (clip_C(Δ_u) + N(0, (z·C)²)); the sum less
  Σ n_u · clip_C(Δ_u) is then N(0, Σ n_u² · (z·C)²) per coordinate;
- FedProx: each silo trains with the proximal term; the sum is Σ n_u · Δ_u of that
  training, within |U3| · step / 2.
A sample variance of d normals is checked with the normal approximation of its
chi-square law, |s² / σ² − 1| < 6 · √(2 / d) (a false alarm below 1e-8).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from client.keys import write_new_key
from client.run import run_client
from client.trainers.numpy_trainer import NumpyTrainer
from client.worker import training_seed
from fedasync.core import codec, keys
from fedasync.core.replay import replay
from fedasync.core.replay_secagg import release_key, sum_key
from fedasync.ops.events import export_ledger, export_objects, folder_loader
from fedasync.server.tasks import start_task
from tests.integration.test_secagg_client import (
    CLIP,
    SILOS,
    client_config,
    data_of,
    stack,
    task_config,
)
from tests.integration.test_server_sync import store_for, wait_execution

__all__ = ["stack"]  # the fixture, shared with test_secagg_client
STEP = CLIP / (((1 << 31) - 1) // len(SILOS))


def trained_delta(global_w, client_id: str, **fit: Any) -> np.ndarray:
    """Δ_u of the plain path's training of round 0, flattened in the model's order."""
    data = data_of(client_id)
    seed = training_seed(0, client_id, 0)
    local = NumpyTrainer().fit(global_w, data.x, data.y, epochs=1, seed=seed, **fit).weights
    return np.concatenate(
        [(local[k].astype(np.float64) - w.astype(np.float64)).ravel() for k, w in global_w.items()]
    )


def clipped(delta: np.ndarray, bound: float) -> np.ndarray:
    norm = math.sqrt(float(np.sum(delta * delta)))
    return delta * (bound / norm) if norm > bound else delta


def spread_ok(residual: np.ndarray, sigma: float) -> bool:
    ratio = float(np.mean(residual * residual)) / sigma**2
    return abs(ratio - 1) < 6 * math.sqrt(2 / residual.size)


async def run_task(stack, tmp_path, **fields: Any):
    key_files = {c: tmp_path / f"{c}.pem" for c in SILOS}
    identities = {c: write_new_key(p) for c, p in key_files.items()}
    cfg = task_config(identities, **fields)
    initial = NumpyTrainer().init_weights(seed=0)
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial)
    runs = [
        run_client(
            client_config(
                stack,
                c,
                secagg_key=key_files[c],
                secagg_identities=cfg.secure_aggregation.identities,
                work_dir=tmp_path / c,
            ),
            trainer=NumpyTrainer(),
            data=data_of(c),
        )
        for c in SILOS
    ]
    silos = asyncio.gather(*runs)
    desc = await wait_execution(stack, arn, timeout_s=150)
    reports = await asyncio.wait_for(silos, 120)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert [r.outcome for r in reports] == ["final"] * len(SILOS)
    result = (await store.get_item("vault", keys.round_sk(0)))["result"]
    assert result["secagg"]["survivors"] == list(SILOS)
    got = codec.decode(await store.get_object(sum_key("vault", 0)))["sum"]
    return store, result, initial, got


async def test_central_dp_noises_the_unmasked_sum_of_deltas_the_silos_clipped(stack, tmp_path):
    # GIVEN a SecAgg task with central DP: C = 0.05 (below every silo's delta norm, so each
    # silo clips), z = 0.5, and the quantiser's range R = 1000 >= C
    c_norm, z = 0.05, 0.5
    privacy = {"mode": "central", "clip_norm": c_norm, "noise_multiplier": z,
               "target_epsilon": 1000.0, "delta": 1e-3}  # fmt: skip
    # WHEN the 5 real client loops run its round
    store, result, initial, got = await run_task(stack, tmp_path, privacy=privacy)
    # THEN the unmasked sum is Σ clip(Δ_u) (clipped at the silos to C − √d·step/2) and the
    # count 5 (weight 1 each), within the quantisation bound
    deltas = [trained_delta(initial, c) for c in SILOS]
    d = deltas[0].size
    assert all(math.sqrt(float(np.sum(x * x))) > c_norm for x in deltas)  # all were clipped
    bound = c_norm - math.sqrt(d) * STEP / 2
    exact = sum(clipped(x, bound) for x in deltas)
    assert np.max(np.abs(got[:-1] - exact)) <= len(SILOS) * STEP / 2 + 1e-12
    assert result["secagg"]["examples"] == len(SILOS)
    # AND the recorded release is that sum plus noise of spread z·C on every coordinate
    blob = await store.get_object(release_key("vault", 0))
    assert codec.sha256_bytes(blob) == result["secagg"]["release_sha256"]
    released = codec.decode(blob)["release"]
    assert released.shape == (d,)
    assert spread_ok(released - got[:-1], z * c_norm)
    # AND the new global model is w + release / 5, in the model's dtypes
    new = codec.decode(await store.get_object(keys.global_key("vault", 1)))
    offset = 0
    for name, w in initial.items():
        part = released[offset : offset + w.size].reshape(w.shape)
        expected = (w.astype(np.float64) + part / len(SILOS)).astype(w.dtype)
        np.testing.assert_array_equal(new[name], expected)
        offset += w.size
    # AND one release was counted, as a sync DP-FedAvg round counts it
    assert result["dp"]["releases"] == 1 and result["dp"]["noise_std"] == z * c_norm
    task = await store.get_item("vault", keys.TASK_SK)
    assert int(task["dp_releases"]) == 1
    # WHEN the task is replayed from its exported ledger and objects
    events = await export_ledger(store, "vault")
    folder = tmp_path / "objects"
    await export_objects(store, events, folder)
    replayed = replay(events, folder_loader(folder))
    # THEN the round is rebuilt from the recorded release, bit for bit
    assert replayed.ok, replayed.problems
    assert [(c.version, c.recorded) for c in replayed.checks] == [(1, result["sha256"])]


async def test_local_dp_silos_clip_and_noise_before_masking(stack, tmp_path):
    # GIVEN a SecAgg task with local DP: C = 0.05, z = 0.5 (each silo's n_u · noise stays
    # far inside R = 1000)
    c_norm, z = 0.05, 0.5
    privacy = {"mode": "local", "clip_norm": c_norm, "noise_multiplier": z,
               "target_epsilon": 1000.0, "delta": 1e-5}  # fmt: skip
    # WHEN the 5 real client loops run its round
    _, result, initial, got = await run_task(stack, tmp_path, privacy=privacy)
    # THEN the sum less Σ n_u · clip_C(Δ_u) is noise of spread √(Σ n_u²) · z · C
    n = {c: len(data_of(c)) for c in SILOS}
    exact = sum(n[c] * clipped(trained_delta(initial, c), c_norm) for c in SILOS)
    sigma = math.sqrt(sum(v * v for v in n.values())) * z * c_norm
    assert spread_ok(got[:-1] - exact, sigma)
    # AND FedAvg's weights are the true example counts
    assert result["secagg"]["examples"] == sum(n.values())


async def test_fedprox_silos_mask_the_update_trained_with_the_proximal_term(stack, tmp_path):
    # GIVEN a SecAgg task with FedProx, mu = 0.5
    mu = 0.5
    # WHEN the 5 real client loops run its round
    _, _, initial, got = await run_task(stack, tmp_path, proximal_mu=mu)
    # THEN the sum is Σ n_u · Δ_u of training with the proximal term, within quantisation
    center = {"proximal_mu": mu, "proximal_center": initial}
    n = {c: len(data_of(c)) for c in SILOS}
    prox = sum(n[c] * trained_delta(initial, c, **center) for c in SILOS)
    plain = sum(n[c] * trained_delta(initial, c) for c in SILOS)
    assert np.max(np.abs(got[:-1] - prox)) <= len(SILOS) * STEP / 2 + 1e-9
    # AND it is not the sum without the term (mu reached the silos' training)
    assert np.max(np.abs(prox - plain)) > 1000 * STEP


@pytest.mark.parametrize("robust", [{"strategy": "median"}, {"clip_update_norm": 1.0}])
def test_robust_aggregation_stays_refused_with_a_reason(robust):
    # GIVEN a SecAgg task asking for a rule that needs individual updates
    # WHEN it is parsed  THEN it is refused, saying SecAgg hides them
    with pytest.raises(ValueError, match="robust aggregation needs individual updates"):
        task_config({}, **robust)
