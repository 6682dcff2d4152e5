"""A server optimizer on sync rounds, on the embedded stack: FedAvgM's momentum carried
from round to round through its stored state, checked against a hand computation."""

from __future__ import annotations

import asyncio

import numpy as np

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (  # noqa: F401 - the stack fixture
    CLIENTS,
    EXAMPLES,
    clients_for,
    fedavg_by_hand,
    initial_model,
    run_client,
    stack,
    store_for,
    wait_execution,
)


async def test_fedavgm_carries_its_momentum_across_rounds_and_replay_rebuilds_it(stack):
    # GIVEN a sync task of 3 rounds with FedAvgM: lr 1, momentum beta1 0.5 (Hsu et al. 2019)
    cfg = TaskConfig.parse(
        {
            "task_name": "momentum",
            "clients": list(CLIENTS),
            "rounds": 3,
            "round_timeout_s": 60,
            "server_optimizer": {"kind": "avgm", "lr": 1.0, "beta1": 0.5},
        }
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN every client answers every round
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 60)
    desc = await wait_execution(stack, arn)
    assert desc["status"] == "SUCCEEDED"
    # THEN each version is x + lr * m with m = beta1 * m + (FedAvg - x), by hand in float64
    x = {k: v.astype(np.float64) for k, v in initial_model().items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    for version in range(1, 4):
        sent = {k: v.astype(np.float32) for k, v in x.items()}
        models = [local_model(sent, i, version - 1) for i in range(3)]
        avg = fedavg_by_hand(models, EXAMPLES)
        m = {k: 0.5 * m[k] + (avg[k].astype(np.float64) - sent[k].astype(np.float64)) for k in x}
        x = {k: sent[k].astype(np.float64) + m[k] for k in x}
        got = codec.decode(await store.get_object(keys.global_key("momentum", version)))
        for name in x:
            np.testing.assert_allclose(got[name], x[name].astype(np.float32), rtol=1e-6)
    # AND the state the server stored after the last round holds that momentum
    task = await store.get_task("momentum")
    state_blob = await store.get_object(keys.optimizer_key("momentum", 3))
    assert codec.sha256_bytes(state_blob) == task["optimizer_sha256"]
    stored = codec.decode(state_blob)
    for name in m:
        np.testing.assert_allclose(stored[f"m/{name}"], m[name], rtol=1e-5, atol=1e-7)
    # AND replay rebuilds every version byte for byte from the ledger
    ledger = await export_ledger(store, "momentum")

    async def fetch(key: str) -> bytes:
        return await store.get_object(key)

    blobs = {}
    for event in ledger:
        for key in _keys_of(event):
            blobs[key] = await fetch(key)
    result = replay(ledger, blobs.__getitem__)
    assert result.ok, (result.problems, result.mismatches)
    assert result.final_version == 3


def _keys_of(event: dict) -> list[str]:
    if event["kind"] == "task":
        return [event["initial"]["s3_key"]]
    if event["kind"] == "update":
        return [event["record"]["s3_key"]]
    return []
