"""Hundreds of silos on the embedded stack: every silo hears every notice.

SNS takes 200 filtered subscriptions per topic, so 250 silos need two topic shards; a
sync round of 150 silos needs its round read split into 100-key BatchGetItems. Each silo
is the real client loop with the numpy trainer, on a few synthetic examples.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from client.config import ClientConfig
from client.data import Dataset
from client.run import run_client
from client.trainers import get_trainer
from fedasync.core.config import TaskConfig
from fedasync.ops.events import export_ledger
from fedasync.resources import topic_shard
from fedasync.server.tasks import start_task
from tests.faults.harness import stack_for
from tests.integration.test_server_sync import store_for, wait_execution

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _data(index: int) -> Dataset:
    rng = np.random.default_rng(index)
    return Dataset(
        x=rng.normal(size=(12, 64)).astype(np.float32),
        y=rng.integers(0, 10, size=12).astype(np.int64),
    )


def _client(stack, task_name: str, client_id: str, index: int) -> ClientConfig:
    e = stack.endpoints
    return ClientConfig(
        task_name=task_name,
        client_id=client_id,
        endpoint_url=e.endpoint_url,
        region=e.region,
        queue_url=e.client_queue_urls[client_id],
        bucket=e.bucket,
        table=e.table,
        heartbeat_interval_s=10.0,
        visibility_timeout_s=120,
        wait_time_s=20,  # as deployed (the default): idle polls cost CPU per silo per second
        epochs=1,
        seed=index,
    )


async def _run(moto_server, prefix, cfg: TaskConfig, timeout_s: float):
    trainer = get_trainer("numpy")
    async with stack_for(moto_server, prefix, clients=cfg.clients) as stack:
        store = store_for(stack)
        arn = await start_task(
            store, stack.endpoints.state_machine_arn, cfg, trainer.init_weights(0)
        )
        reports = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_client(_client(stack, cfg.task_name, c, i), trainer=trainer, data=_data(i))
                    for i, c in enumerate(cfg.clients)
                )
            ),
            timeout=timeout_s,
        )
        desc = await wait_execution(stack, arn, timeout_s=60)
        ledger = await export_ledger(store, cfg.task_name)
        return stack, reports, desc, ledger


async def test_a_sync_round_of_150_silos_closes_with_every_silo(moto_server, prefix):
    silos = tuple(f"silo-{i:03d}" for i in range(150))
    cfg = TaskConfig.parse(
        {
            "task_name": "wide-sync",
            "mode": "sync",
            "clients": list(silos),
            "rounds": 2,
            "round_timeout_s": 300,
        }
    )
    # WHEN 150 silos take part in 2 rounds
    _, reports, desc, ledger = await _run(moto_server, prefix, cfg, timeout_s=400)
    # THEN the execution succeeds, and every silo's update went into both rounds
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert {r.client_id: len(r.updates) for r in reports} == dict.fromkeys(silos, 2)
    accepted = Counter(
        e["client_id"]
        for e in ledger
        if e.get("kind") == "update" and e.get("verdict") == "accepted"
    )
    assert accepted == Counter(dict.fromkeys(silos, 2))


async def test_an_async_task_of_250_silos_serves_every_silo(moto_server, prefix):
    silos = tuple(f"silo-{i:03d}" for i in range(250))
    # GIVEN 250 silos: more than one topic takes (200 filter policies), so two shards
    assert len({topic_shard(c, 2) for c in silos}) == 2
    cfg = TaskConfig.parse(
        {
            "task_name": "wide-async",
            "mode": "async",
            "clients": list(silos),
            "alpha": 0.5,
            "staleness": "polynomial(0.5)",
            "max_staleness": 1000,
            "max_versions": 300,
            "heartbeat_s": 300,
        }
    )
    # WHEN they train until version 300
    stack, reports, desc, ledger = await _run(moto_server, prefix, cfg, timeout_s=500)
    assert stack.endpoints.topic_shards == 2
    # THEN the task succeeds, and every silo was served the open notice and submitted
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert all(r.updates for r in reports), [r.client_id for r in reports if not r.updates]
    versions = sorted(
        e["applied_version"]
        for e in ledger
        if e.get("kind") == "update" and e.get("verdict") == "accepted"
    )
    assert versions == list(range(1, 301))
