"""Queued async updates absorbed as one run per stream batch: same bytes as one by one."""

from __future__ import annotations

import numpy as np
import pytest

from fedasync.aws.records import serialize_item
from fedasync.core import codec, keys
from fedasync.core.asyncagg import AsyncState, absorb
from fedasync.core.config import TaskConfig
from fedasync.core.messages import UpdateRecord
from fedasync.server.tasks import start_task
from tests.integration.test_server_async import make_stack
from tests.integration.test_server_sync import initial_model, store_for, wait_execution

CLIENTS = ("a", "b", "c")


def local(x0, i):
    rng = np.random.default_rng(50 + i)
    return {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in x0.items()}


def one_by_one(cfg, x0, models):
    """The oracle: the pure core applied per update in arrival order, all from base 0."""
    state, x, buffer_sum = AsyncState(), x0, None
    for model in models:
        out = absorb(
            state, cfg, base_version=0, global_w=x, client_w=model, base_w=x0, buffer_sum=buffer_sum
        )
        state = out.state
        if out.new_global is not None:
            x, buffer_sum = out.new_global, None
        if out.buffer_sum is not None:
            buffer_sum = out.buffer_sum
    return state, codec.encode(x)


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
async def test_updates_queued_together_give_the_one_by_one_bytes(
    moto_server, prefix, wait_until, strategy
):
    # GIVEN an open async task and 12 updates from base 0, all written back to back
    n = 12
    cfg = TaskConfig.parse(
        {
            "task_name": f"run-{strategy}",
            "mode": "async",
            "strategy": strategy,
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "staleness": "polynomial(0.5)",
            "buffer_size": 4,
            "max_staleness": n,
            "max_versions": n if strategy == "fedasync" else n // 4,
        }
    )
    x0 = initial_model()
    models = [local(x0, i) for i in range(n)]
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        e = stack.endpoints
        arn = await start_task(store, e.state_machine_arn, cfg, x0)
        await wait_until(lambda: _opened(store, cfg.task_name), timeout_s=20)
        items = []
        for i, model in enumerate(models):
            client, update_id = CLIENTS[i % 3], f"{CLIENTS[i % 3]}-u{i:03d}"
            key = keys.local_key(cfg.task_name, client, 0, update_id)
            blob = codec.encode(model)
            await store.put_object(key, blob, codec.sha256_bytes(blob))
            record = UpdateRecord(
                task_name=cfg.task_name,
                client_id=client,
                update_id=update_id,
                base_version=0,
                s3_key=key,
                sha256=codec.sha256_bytes(blob),
                size_bytes=len(blob),
                num_examples=10,
            )
            items.append(record.item())
        ddb = await stack.aws.dynamodb()
        for item in items:
            await ddb.put_item(TableName=e.table, Item=serialize_item(item))
        desc = await wait_execution(stack, arn)
        # THEN every update is accepted in arrival order and the final model is the oracle's
        state, expected = one_by_one(cfg, x0, models)
        task = await store.get_task(cfg.task_name)
        assert desc["status"] == "SUCCEEDED"
        assert (task["absorbed"], task["head_version"]) == (state.absorbed, state.version)
        final = await store.get_object(keys.final_key(cfg.task_name))
        assert codec.sha256_bytes(final) == codec.sha256_bytes(expected)
        updates = await store.query_prefix(cfg.task_name, keys.UPDATE_PREFIX)
        seqs = {u["update_id"]: u.get("seq") for u in updates}
        assert [seqs[it["update_id"]] for it in items] == list(range(1, n + 1))
        # AND every version's object is the one its verdict recorded
        for u in updates:
            if "version_sha256" in u:
                blob = await store.get_object(keys.global_key(cfg.task_name, u["applied_version"]))
                assert codec.sha256_bytes(blob) == u["version_sha256"]


async def _opened(store, task_name):
    return bool((await store.get_task(task_name) or {}).get("token"))
