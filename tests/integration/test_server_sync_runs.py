"""A sync round's updates decided as one run (one stream batch): the one-by-one outcome."""

from __future__ import annotations

import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from fedasync.server.updates import decide_run, on_update
from tests.integration.scripted import local_model
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)


def _config(name: str, min_clients: int = 3) -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": name,
            "mode": "sync",
            "clients": list(CLIENTS),
            "rounds": 1,
            "min_clients": min_clients,
        }
    )


def _no_pump(moto_server, prefix) -> EmbeddedStack:
    """The real ASL and control handler, but no stream pump: the test hands runs over."""
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    return EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url, aggregate_handler=None)


async def _updates(store, name):
    return {u["client_id"]: u for u in await store.query_prefix(name, keys.UPDATE_PREFIX)}


async def test_a_whole_round_in_one_run_is_accepted_and_closed_with_fedavg(moto_server, prefix):
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a sync task's open round and every client's update written back to back
        store, cfg, x0 = store_for(stack), _config("run-all"), initial_model()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        # WHEN the stream batch is decided as one run
        decided = await decide_run(store, cfg.task_name, sks)
        # THEN all three are accepted for version 1, and the round closes with their FedAvg
        assert decided == 3
        updates = await _updates(store, cfg.task_name)
        assert {c: (u["verdict"], u["applied_version"]) for c, u in updates.items()} == {
            c: ("accepted", 1) for c in CLIENTS
        }
        desc = await wait_execution(stack, arn)
        assert desc["status"] == "SUCCEEDED"
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)
        # AND a redelivery of the same batch decides nothing twice
        assert await decide_run(store, cfg.task_name, sks) == 0


async def test_a_bad_update_is_rejected_by_the_run_and_the_rest_of_the_run_is_decided(
    moto_server, prefix
):
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN an open round where the middle update of the batch is mis-shaped
        store, cfg, x0 = store_for(stack), _config("run-bad", min_clients=2), initial_model()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        a, b, c = clients_for(stack)
        bad = {"dense/kernel": np.zeros((3, 4), np.float32), "dense/bias": np.zeros(3, np.float32)}
        records = [
            await a.submit(await first_notice(a)),
            await b.submit(await first_notice(b), bad),
            await c.submit(await first_notice(c)),
        ]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        # WHEN the batch is decided as a run
        decided = await decide_run(store, cfg.task_name, sks)
        # THEN the run decides all three: the bad one is a rejection of the run's plan, with
        # its reason, and the round closes without it
        assert decided == 3
        updates = await _updates(store, cfg.task_name)
        assert updates[a.client_id]["verdict"] == updates[c.client_id]["verdict"] == "accepted"
        assert updates[b.client_id]["verdict"] == "rejected"
        assert updates[b.client_id]["reason"] == "shape"
        assert "dense/kernel" in updates[b.client_id]["detail"]
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        expected = fedavg_by_hand(
            [local_model(x0, 0, 0), local_model(x0, 2, 0)], (EXAMPLES[0], EXAMPLES[2])
        )
        got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)


async def _tamper(stack, client, record) -> None:
    """The silo rewrites its accepted object (its own prefix: its policy allows the put)."""
    s3 = await stack.aws.s3()
    forged = {"dense/kernel": np.full((4, 3), 9, np.float32), "dense/bias": np.ones(3, np.float32)}
    await s3.put_object(Bucket=client.bucket, Key=record.s3_key, Body=codec.encode(forged))


async def test_an_object_rewritten_after_its_verdict_never_enters_the_global_model(
    moto_server, prefix
):
    from fedasync.core.errors import ChecksumMismatchError
    from fedasync.server.cache import CACHE

    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a round where the first update is accepted, and its silo then rewrites it
        store, cfg, x0 = store_for(stack), _config("run-rewrite"), initial_model()
        await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        assert await decide_run(store, cfg.task_name, sks[:1]) == 1
        await _tamper(stack, clients[0], records[0])
        # WHEN the round closes on a container that validated it (warm cache)
        assert await decide_run(store, cfg.task_name, sks[1:]) == 2
        # THEN version 1 is the FedAvg of the models as accepted, not of the rewrite
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)

    async with _no_pump(moto_server, f"{prefix}c") as stack:
        # AND on a cold container the close reads the object again, finds the SHA-256
        # changed and refuses to aggregate: the head stays where it was
        store, cfg, x0 = store_for(stack), _config("run-rewrite-cold"), initial_model()
        await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        await on_update(store, cfg.task_name, sks[0])  # the one-by-one path caches it too
        await _tamper(stack, clients[0], records[0])
        CACHE.clear()
        with pytest.raises(ChecksumMismatchError, match="changed after the update was accepted"):
            await decide_run(store, cfg.task_name, sks[1:])
        task = await store.get_task(cfg.task_name)
        assert task["head_version"] == 0


@pytest.mark.parametrize("cold", [True, False], ids=["cold", "warm"])
async def test_a_round_over_several_runs_is_counted_on_its_item_and_closes_once(
    moto_server, prefix, cold
):
    from fedasync.server.cache import CACHE

    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a round whose updates arrive in two batches, decided by a fresh container
        # or one that has seen the task
        store, cfg, x0 = store_for(stack), _config("run-tally"), initial_model()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        if cold:
            CACHE.clear()
        # WHEN the first batch does not complete the round
        assert await decide_run(store, cfg.task_name, sks[:1]) == 1
        # THEN the round item counts that client's word (and only it), and stays open
        round_item = await store.get_item(cfg.task_name, keys.round_sk(0))
        assert round_item.get("closed") is None
        assert round_item["settled"] == {CLIENTS[0]}
        assert round_item["accepted_clients"] == {CLIENTS[0]}
        # WHEN the second batch completes it
        assert await decide_run(store, cfg.task_name, sks[1:]) == 2
        # THEN the round closes once, with every update, and the bytes are FedAvg's
        round_item = await store.get_item(cfg.task_name, keys.round_sk(0))
        assert round_item["closed"] is True
        assert round_item["members"] == sorted(sks)
        assert round_item["settled"] == set(CLIENTS)
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)
