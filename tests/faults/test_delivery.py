"""At-least-once delivery: duplicates, redelivered batches and every arrival order a stream
allows give byte-identical global models."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.server.tasks import start_task
from tests.faults.harness import (
    CLIENTS,
    EXAMPLES,
    KINDS,
    Flaky,
    assert_same_as,
    config,
    drive,
    next_notice,
    stack_for,
)
from tests.integration.test_server_sync import clients_for, initial_model, store_for, wait_execution


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["every-record-twice", "whole-batch-fails", "last-record-fails"])
async def test_faulty_delivery_gives_the_same_bytes_as_a_clean_run(
    moto_server, prefix, reference, kind, fault
):
    # GIVEN a stack whose stream delivery is faulty in one of Lambda's ways
    flaky = Flaky({"whole-batch-fails": "whole", "last-record-fails": "partial"}.get(fault, "none"))
    options = {"deliver_twice": fault == "every-record-twice"}
    async with stack_for(moto_server, prefix, handler=flaky, **options) as stack:
        # WHEN the same scripted task runs
        got = await drive(stack, config(kind, f"ref-{kind}"))
    # THEN it succeeds with exactly the clean run's versions, byte for byte
    # AND every update was decided exactly once
    assert_same_as(got, reference[kind])
    if fault != "every-record-twice":
        assert flaky.injected > 0  # the fault really happened


async def test_every_arrival_order_of_a_round_gives_the_same_version(moto_server, prefix):
    # GIVEN one stack and, per order, a one-round sync task with 3 clients
    shas = set()
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        for n, order in enumerate(itertools.permutations(range(len(CLIENTS)))):
            cfg = TaskConfig.parse(
                {"task_name": f"perm{n}", "mode": "sync", "clients": list(CLIENTS), "rounds": 1}
            )
            arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
            clients = clients_for(stack, CLIENTS, EXAMPLES)
            notices = await asyncio.gather(*(next_notice(c, cfg.task_name) for c in clients))
            # WHEN the clients' records reach the stream in this order
            for i in order:
                await clients[i].submit(notices[i])
            desc = await wait_execution(stack, arn)
            assert desc["status"] == "SUCCEEDED"
            shas.add(codec.sha256_bytes(await store.get_object(keys.global_key(cfg.task_name, 1))))
    # THEN all 6 orders produced one and the same version 1
    assert len(shas) == 1
