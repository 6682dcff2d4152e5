"""Sync rounds with update norm clipping (clip_update_norm) on the embedded stack: every
delta against the round's global model is clipped before FedAvg; heads by hand, replay
byte for byte."""

from __future__ import annotations

import asyncio

import numpy as np

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_async_screening import _replayed
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    fedavg_by_hand,
    initial_model,
    run_client,
    stack,  # noqa: F401  (the fixture)
    store_for,
    wait_execution,
)

BOUND = 3.0


def _clipped(model: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """By hand: base + delta x min(1, BOUND / ||delta||), the norm over the whole model."""
    delta = {k: model[k].astype(np.float64) - base[k].astype(np.float64) for k in base}
    norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
    scale = min(1.0, BOUND / norm)
    return {k: (base[k] + delta[k] * scale).astype(np.float32) for k in base}


async def test_each_delta_is_clipped_to_the_bound_before_fedavg(stack):
    # GIVEN a sync task of 2 rounds clipping deltas to norm 3; the scripted silos move
    # each value by shift x (1, 2, 3, ...): delta norms |shift| x sqrt(70), round 0
    # 2.09 (kept), 4.18 and 6.27 (clipped); round 1 1.25 (kept), 3.35 and 5.44 (clipped)
    cfg = TaskConfig.parse(
        {
            "task_name": "clipped",
            "clients": list(CLIENTS),
            "rounds": 2,
            "round_timeout_s": 60,
            "clip_update_norm": BOUND,
        }
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN every client answers every round
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 60)
    desc = await wait_execution(stack, arn)
    assert desc["status"] == "SUCCEEDED"
    # THEN each version is FedAvg of the clipped models, by hand
    expected = initial_model()
    for version in range(1, 3):
        models = [_clipped(local_model(expected, i, version - 1), expected) for i in range(3)]
        expected = fedavg_by_hand(models, EXAMPLES)
        got = codec.decode(await store.get_object(keys.global_key("clipped", version)))
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5)
    # AND the clipping mattered: the FedAvg of the unclipped models is far from version 1
    unclipped = fedavg_by_hand([local_model(initial_model(), i, 0) for i in range(3)], EXAMPLES)
    got1 = codec.decode(await store.get_object(keys.global_key("clipped", 1)))
    assert np.max(np.abs(got1["dense/kernel"] - unclipped["dense/kernel"])) > 0.1
    # AND replay clips the same way: every version byte for byte
    _, result, _ = await _replayed(store, "clipped")
    assert result.ok, (result.problems, result.mismatches)
    assert result.final_version == 2
