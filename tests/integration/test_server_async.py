"""Async tasks on the embedded stack: FedAsync and FedBuff per update, by hand, to the end."""

from __future__ import annotations

import math

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
from tests.integration.test_server_sync import clients_for, initial_model, store_for, wait_execution

CLIENTS = ("a", "b", "c")


async def make_stack(moto_server, prefix, **options):
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    return EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, pump_options=PumpOptions(**options)
    )


async def first_notice(client):
    while True:
        notice = await client.poll()
        if notice is not None:
            return notice


async def go_ahead(client, after_version=0):
    """The first notice past `after_version` (earlier ones, duplicates included, are skipped)."""
    while True:
        notice = await first_notice(client)
        if notice.version > after_version:
            return notice


async def owed_go_ahead(store, task, wait_until):
    """The TASK item's `waiting` set once it is there (written just after a rejection)."""

    async def waiting():
        return (await store.get_task(task)).get("waiting")

    return await wait_until(waiting, timeout_s=20)


def mix(x, c, a):
    return {
        k: ((1 - a) * x[k].astype(np.float64) + a * c[k].astype(np.float64)).astype(np.float32)
        for k in x
    }


async def head(store, task, wait_until, version):
    async def reached():
        item = await store.get_task(task)
        return item if item and item["head_version"] >= version else None

    return await wait_until(reached, timeout_s=20)


async def verdict(store, task, sk, wait_until):
    async def decided():
        item = await store.get_item(task, sk)
        return item if item and item.get("verdict") else None

    return await wait_until(decided, timeout_s=20)


@pytest.mark.parametrize("deliver_twice", [False, True], ids=["once", "every-record-twice"])
async def test_fedasync_absorbs_in_arrival_order_rejects_stale_and_succeeds(
    moto_server, prefix, wait_until, deliver_twice
):
    # GIVEN an async FedAsync task: alpha 0.5, polynomial(1) staleness, max_staleness 1, 3 versions
    cfg = TaskConfig.parse(
        {
            "task_name": "fa",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "staleness": "polynomial(1)",
            "max_staleness": 1,
            "max_versions": 3,
        }
    )
    async with await make_stack(moto_server, prefix, deliver_twice=deliver_twice) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, c = clients_for(stack, CLIENTS, (5, 5, 5))
        n0 = [await first_notice(x) for x in (a, b, c)]
        x0 = initial_model()
        # WHEN a, b and c submit updates trained from version 0, in that order
        for client, notice in zip((a, b, c), n0, strict=True):
            await client.submit(notice)
        # THEN a is fresh (alpha_t = 0.5), b has staleness 1 (alpha_t = 0.5 / 2), c is rejected as stale
        x1 = mix(x0, local_model(x0, 0, 0), 0.5)
        x2 = mix(x1, local_model(x0, 1, 0), 0.25)
        rejected = await verdict(store, "fa", keys.update_sk("c", "c-v00000000", None), wait_until)
        assert rejected["verdict"] == "rejected"
        assert rejected["reason"] == "stale"
        assert "stale: 2 > 1" in rejected["detail"]
        await head(store, "fa", wait_until, 2)
        for version, expected in ((1, x1), (2, x2)):
            got = codec.decode(await store.get_object(keys.global_key("fa", version)))
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name])
        # AND a and b have their go-ahead on the head once their update was absorbed (a's
        # alone, or with b's when one stream batch held both); c, rejected, is owed one
        na, nb = await go_ahead(a), await go_ahead(b)
        assert (na.version in (1, 2), nb.version) == (True, 2)
        assert await owed_go_ahead(store, "fa", wait_until) == {"c"}
        # AND a third fresh update (b's, on version 2) reaches max_versions: SUCCEEDED
        await b.submit(nb)
        desc = await wait_execution(stack, arn)
        x3 = mix(x2, local_model(x2, 1, 2), 0.5)
        final = codec.decode(await store.get_object(keys.final_key("fa")))
        for name in x3:
            np.testing.assert_array_equal(final[name], x3[name])
        assert desc["status"] == "SUCCEEDED"
        task = await store.get_task("fa")
        assert (task["head_version"], task["absorbed"], task["finished"]) == (3, 3, "max_versions")


async def test_fedbuff_applies_the_weighted_mean_delta_every_k_updates(
    moto_server, prefix, wait_until
):
    # GIVEN FedBuff with K = 2, server_lr 1, 1 version
    cfg = TaskConfig.parse(
        {
            "task_name": "fb",
            "mode": "async",
            "strategy": "fedbuff",
            "clients": list(CLIENTS),
            "buffer_size": 2,
            "server_lr": 1.0,
            "max_versions": 1,
        }
    )
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, _ = clients_for(stack, CLIENTS, (5, 5, 5))
        na, nb = await first_notice(a), await first_notice(b)
        # WHEN a submits from version 0 (buffered, no new version), then b from version 0
        await a.submit(na)
        first = await verdict(store, "fb", keys.update_sk("a", "a-v00000000", None), wait_until)
        assert first["verdict"] == "accepted"
        assert (await store.get_task("fb"))["head_version"] == 0
        await b.submit(nb)
        desc = await wait_execution(stack, arn)
        # THEN x1 = x0 + (1*dA + 1*dB) / 2 (both fresh: weight 1/sqrt(1+0) = 1)
        x0 = initial_model()
        da = {k: local_model(x0, 0, 0)[k].astype(np.float64) - x0[k] for k in x0}
        db = {k: local_model(x0, 1, 0)[k].astype(np.float64) - x0[k] for k in x0}
        expected = {k: (x0[k] + (da[k] + db[k]) / 2).astype(np.float32) for k in x0}
        got = codec.decode(await store.get_object(keys.final_key("fb")))
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        assert desc["status"] == "SUCCEEDED"
        assert math.isclose(
            (await store.get_item("fb", keys.update_sk("b", "b-v00000000", None)))["weight"], 1.0
        )


async def test_a_silo_rejected_on_the_head_waits_for_the_next_go_ahead(
    moto_server, prefix, wait_until
):
    # GIVEN a FedAsync task of three silos
    cfg = TaskConfig.parse(
        {
            "task_name": "wait",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_versions": 2,
        }
    )
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, _ = clients_for(stack, CLIENTS, (5, 5, 5))
        na, nb = await first_notice(a), await first_notice(b)
        # WHEN a's update on the head is mis-shaped: a notice of that same head would only
        # find a's own record, so a is owed the next go-ahead instead
        bad = {"dense/kernel": np.zeros((3, 4), np.float32), "dense/bias": np.zeros(3, np.float32)}
        await a.submit(na, bad)
        rejected = await verdict(
            store, "wait", keys.update_sk("a", "a-v00000000", None), wait_until
        )
        assert rejected["reason"] == "shape"
        assert await owed_go_ahead(store, "wait", wait_until) == {"a"}
        # THEN b's accepted update gives both b and a a go-ahead on version 1
        await b.submit(nb)
        assert (await go_ahead(a)).version == (await go_ahead(b)).version == 1
        # AND once a's next update is accepted it is owed nothing more
        await a.submit(a.seen[-1])
        desc = await wait_execution(stack, arn)
        assert desc["status"] == "SUCCEEDED"
        task = await store.get_task("wait")
        assert "waiting" not in task  # the emptied set is gone, as DynamoDB does
        assert task["head_version"] == 2
