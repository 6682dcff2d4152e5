"""A sync round of more silos than one DynamoDB batch holds (BatchGetItem: 100 keys)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)

pytestmark = pytest.mark.slow

SILOS = tuple(f"silo-{i:03d}" for i in range(120))
EXAMPLES = tuple(10 + i for i in range(len(SILOS)))
ROUNDS = 1
IN_FLIGHT = 16  # silos submitting at once (the shared client pool holds 50 connections)


async def notice_for_round(client: ScriptedClient, round_id: int) -> GlobalModelNotice:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        notice = await client.poll(wait_s=1)
        if notice is not None and notice.round_id == round_id:
            return notice
    raise AssertionError(f"{client.client_id} got no notice for round {round_id}")


async def test_a_sync_task_of_120_silos_closes_every_round_with_their_fedavg(
    moto_server, prefix
) -> None:
    # GIVEN a sync task over 120 silos, every one of them needed each round
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    cfg = TaskConfig.parse(
        {
            "task_name": "many",
            "clients": list(SILOS),
            "rounds": ROUNDS,
            "round_timeout_s": 300,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = clients_for(stack, SILOS, EXAMPLES)
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def submit(client: ScriptedClient, notice: GlobalModelNotice) -> None:
            async with slots:
                await client.submit(notice)

        # WHEN every silo answers every round (the notices are read one silo after the
        # other: one publish fills every queue, and 120 pollers would only load moto)
        for round_id in range(ROUNDS):
            notices = [await notice_for_round(c, round_id) for c in clients]
            await asyncio.wait_for(
                asyncio.gather(*(submit(c, n) for c, n in zip(clients, notices, strict=True))),
                timeout=120,
            )
        desc = await wait_execution(stack, arn, timeout_s=120)
        # THEN the task succeeds, and each version is the FedAvg of all 120 local models
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        expected = initial_model()
        for version in range(1, ROUNDS + 1):
            models = [local_model(expected, i, version - 1) for i in range(len(SILOS))]
            expected = fedavg_by_hand(models, EXAMPLES)
            got = codec.decode(await store.get_object(keys.global_key("many", version)))
            for name, value in expected.items():
                # float64 sums in another order than ours: equal up to float32 rounding
                np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7)
            round_item = await store.get_item("many", keys.round_sk(version - 1))
            assert round_item is not None and len(round_item["members"]) == len(SILOS)
        assert (await store.get_task("many"))["head_version"] == ROUNDS
