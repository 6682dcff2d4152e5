"""Round deadlines, duplicate delivery in sync mode, and two tasks sharing one stack."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.pumps import PumpOptions
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    fedavg_by_hand,
    initial_model,
    run_client,
    store_for,
    wait_execution,
)


@pytest.fixture
async def stack(moto_server, prefix, request):
    options = PumpOptions(deliver_twice=getattr(request, "param", False))
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, pump_options=options
    ) as s:
        yield s


async def answer_once(client):
    while True:
        notice = await client.poll()
        if notice is not None:
            await client.submit(notice)
            return notice


async def test_deadline_with_quorum_closes_the_round_with_the_arrivals(stack):
    # GIVEN one round, quorum 2 of 3, a 3 s deadline
    cfg = TaskConfig.parse(
        {
            "task_name": "q",
            "clients": list(CLIENTS),
            "rounds": 1,
            "min_clients": 2,
            "round_timeout_s": 3,
        }
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN only the first two clients answer
    a, b, _ = clients_for(stack)
    await asyncio.gather(answer_once(a), answer_once(b))
    desc = await wait_execution(stack, arn, timeout_s=30)
    # THEN the round closes at its deadline with exactly their FedAvg
    x0 = initial_model()
    expected = fedavg_by_hand([local_model(x0, 0, 0), local_model(x0, 1, 0)], EXAMPLES[:2])
    got = codec.decode(await store.get_object(keys.global_key("q", 1)))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert desc["status"] == "SUCCEEDED"


async def test_deadline_without_quorum_fails_with_a_readable_cause(stack):
    cfg = TaskConfig.parse(
        {
            "task_name": "nq",
            "clients": list(CLIENTS),
            "rounds": 2,
            "min_clients": 2,
            "round_timeout_s": 2,
        }
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    a = clients_for(stack)[0]
    await answer_once(a)
    desc = await wait_execution(stack, arn, timeout_s=30)
    assert desc["status"] == "FAILED"
    cause = "round 0 of task 'nq' closed at its deadline with 1 accepted update(s); 2 needed (min_clients)"
    assert desc.get("cause") == cause
    task = await store.get_task("nq")
    assert task["status"] == "FAILED"
    assert task["cause"] == cause
    assert task["head_version"] == 0  # the global model was not touched


@pytest.mark.parametrize("stack", [True], indirect=True, ids=["every-record-twice"])
async def test_records_delivered_twice_give_the_same_models(stack):
    cfg = TaskConfig.parse(
        {"task_name": "dup", "clients": list(CLIENTS), "rounds": 2, "round_timeout_s": 60}
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 60)
    assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
    x = initial_model()
    for version in (1, 2):
        x = fedavg_by_hand([local_model(x, i, version - 1) for i in range(3)], EXAMPLES)
    got = codec.decode(await store.get_object(keys.global_key("dup", 2)))
    for name in x:
        np.testing.assert_array_equal(got[name], x[name])


async def test_a_sync_and_an_async_task_share_a_stack_without_touching_each_other(stack):
    sync_cfg = TaskConfig.parse(
        {"task_name": "s1", "clients": list(CLIENTS), "rounds": 1, "round_timeout_s": 60}
    )
    async_cfg = TaskConfig.parse(
        {
            "task_name": "a1",
            "mode": "async",
            "clients": list(CLIENTS),
            "max_versions": 3,
            "max_staleness": 5,
        }
    )
    store = store_for(stack)
    sync_arn = await start_task(store, stack.endpoints.state_machine_arn, sync_cfg, initial_model())
    async_arn = await start_task(
        store, stack.endpoints.state_machine_arn, async_cfg, initial_model()
    )
    clients = clients_for(stack)

    async def serve(client):
        done = set()
        while done != {"s1", "a1"}:
            notice = await client.poll()
            if notice is None or notice.task_name in done:
                continue
            if notice.final:
                done.add(notice.task_name)
                continue
            await client.submit(notice)

    await asyncio.wait_for(asyncio.gather(*(serve(c) for c in clients)), 60)
    assert (await wait_execution(stack, sync_arn))["status"] == "SUCCEEDED"
    assert (await wait_execution(stack, async_arn))["status"] == "SUCCEEDED"
    sync_task, async_task = await store.get_task("s1"), await store.get_task("a1")
    assert sync_task["head_version"] == 1
    assert async_task["head_version"] == 3
    # each task's updates stay in its own partition and prefix
    s3 = await stack.aws.s3()
    listed = await s3.list_objects_v2(Bucket=stack.endpoints.bucket)
    for obj in listed["Contents"]:
        assert obj["Key"].split("/")[0] in ("s1", "a1")
    for item in await store.query_prefix("s1", keys.UPDATE_PREFIX):
        assert item["s3_key"].startswith("s1/local/")
        assert item["round_id"] == 0
