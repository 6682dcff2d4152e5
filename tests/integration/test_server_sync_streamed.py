"""A sync round of models larger than the aggregate function's whole-check budget: each
update checked streamed at its verdict, folded range by range at the close, and the new
global written by multipart upload, with the bytes of the whole-model FedAvg."""

from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np
import pytest

from fedasync import limits
from fedasync.core import codec, keys
from fedasync.core.errors import ChecksumMismatchError
from fedasync.limits import AggregateSizing
from fedasync.server.cache import CACHE
from fedasync.server.tasks import start_task
from fedasync.server.updates import decide_run, on_update
from tests.integration.scripted import local_model
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    store_for,
    wait_execution,
)
from tests.integration.test_server_sync_runs import _config, _no_pump, _updates

MiB = 1024 * 1024


def _sizing(chunk_bytes: int) -> AggregateSizing:
    # 1 MB of "memory" and no overhead: a whole check only up to ~32 KB, so every model
    # below is checked and folded streamed; parts of S3's least size
    return AggregateSizing(
        memory_mb=1, ephemeral_mb=2048, chunk_bytes=chunk_bytes, overhead_bytes=0,
        part_bytes=5 * MiB,
    )  # fmt: skip


def _mixed() -> dict[str, np.ndarray]:
    """~53 KB: a tensor spanning many 4 KiB ranges, small ones sharing one, three dtypes."""
    rng = np.random.default_rng(11)
    return {
        "dense/kernel": rng.normal(size=(200, 60)).astype(np.float32),
        "dense/bias": rng.normal(size=(60,)).astype(np.float32),
        "emb": rng.normal(size=(50, 40)).astype(np.float16),
        "norm": rng.normal(size=(30,)).astype(ml_dtypes.bfloat16),
    }


def _large() -> dict[str, np.ndarray]:
    """6.4 MB of float32: the new global goes up in two multipart parts of 5 MiB."""
    rng = np.random.default_rng(12)
    return {"w": rng.normal(size=(1_600_000,)).astype(np.float32), "b": np.zeros(3, np.float32)}


def _by_hand(models: list[dict[str, np.ndarray]], ns: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The oracle: sum_i n_i * x_i in float64, in the round's order, / sum n_i, cast back."""
    out = {}
    for name, first in models[0].items():
        acc = np.zeros(first.shape, np.float64)
        for m, n in zip(models, ns, strict=True):
            acc += m[name].astype(np.float64) * n
        out[name] = (acc / sum(ns)).astype(first.dtype)
    return out


@pytest.mark.parametrize(
    ("model", "chunk_bytes", "parts"),
    [(_mixed, 4096, None), (_large, MiB, 2)],
    ids=["mixed", "large"],
)
async def test_a_streamed_round_stores_the_bytes_of_the_whole_fedavg(
    moto_server, prefix, monkeypatch, model, chunk_bytes, parts
):
    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _sizing(chunk_bytes))
    CACHE.clear()
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a sync task whose model is larger than the whole-check budget, and every
        # client's update of its open round
        store, cfg, x0 = store_for(stack), _config("streamed"), model()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        # WHEN the batch is decided (checked streamed) and the round closes (folded streamed)
        assert await decide_run(store, cfg.task_name, sks) == 3
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        # THEN no update was decoded into the cache, every one was accepted
        assert all(CACHE.get(r.sha256) is None for r in records)
        updates = await _updates(store, cfg.task_name)
        assert {u["verdict"] for u in updates.values()} == {"accepted"}
        # AND version 1 is the oracle's FedAvg, byte for byte as codec.encode writes it
        expected = _by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        blob = await store.get_object(keys.global_key(cfg.task_name, 1))
        assert blob == codec.encode(expected)
        # AND its SHA-256 is the one the TASK item and the object's metadata record
        task = await store.get_task(cfg.task_name)
        sha = hashlib.sha256(blob).hexdigest()
        assert task["head_sha256"] == sha and task["head_size"] == len(blob)
        s3 = await stack.aws.s3()
        where = {"Bucket": stack.endpoints.bucket, "Key": keys.global_key(cfg.task_name, 1)}
        assert (await s3.head_object(**where))["Metadata"]["sha256"] == sha
        head = await s3.head_object(**where, PartNumber=1)
        assert head.get("PartsCount") == parts  # None: one plain put (a single part)


async def test_a_large_update_with_nan_is_rejected_at_its_verdict_and_the_round_closes_without(
    moto_server, prefix, monkeypatch
):
    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _sizing(4096))
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a round where the second client's large update holds two NaN in its kernel
        store, cfg, x0 = store_for(stack), _config("streamed-nan", min_clients=2), _mixed()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        a, b, c = clients_for(stack)
        poisoned = local_model(x0, 1, 0)
        poisoned["dense/kernel"][150, :2] = np.nan  # past the first ranges: found streaming
        records = [
            await a.submit(await first_notice(a)),
            await b.submit(await first_notice(b), poisoned),
            await c.submit(await first_notice(c)),
        ]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        # WHEN the batch is decided as a run, then the rest one by one (as the handler does)
        decided = await decide_run(store, cfg.task_name, sks)
        for sk in sks[decided:]:
            await on_update(store, cfg.task_name, sk)
        # THEN it is rejected as non-finite, on the client's word, naming the tensor
        updates = await _updates(store, cfg.task_name)
        bad = updates[CLIENTS[1]]
        assert (bad["verdict"], bad["reason"], bad["attributed"]) == (
            "rejected",
            "non_finite",
            True,
        )
        assert "2 NaN/Inf value(s) in tensor 'dense/kernel'" in bad["detail"]
        # AND the round closes with the FedAvg of the other two
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        expected = _by_hand(
            [local_model(x0, 0, 0), local_model(x0, 2, 0)], (EXAMPLES[0], EXAMPLES[2])
        )
        blob = await store.get_object(keys.global_key(cfg.task_name, 1))
        assert blob == codec.encode(expected)


async def test_a_large_update_rewritten_after_its_verdict_stops_the_close_and_nothing_is_stored(
    moto_server, prefix, monkeypatch
):
    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _sizing(4096))
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a round whose first update is accepted, then rewritten by its silo with the
        # same shapes (its header still fits: only the hash can tell)
        store, cfg, x0 = store_for(stack), _config("streamed-rewrite"), _mixed()
        await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        assert await decide_run(store, cfg.task_name, sks[:1]) == 1
        forged = {k: np.full_like(v, 9) for k, v in local_model(x0, 0, 0).items()}
        s3 = await stack.aws.s3()
        await s3.put_object(
            Bucket=clients[0].bucket, Key=records[0].s3_key, Body=codec.encode(forged)
        )
        # WHEN the rest arrive and the round closes, folding it streamed
        with pytest.raises(ChecksumMismatchError, match="changed after the update was accepted"):
            await decide_run(store, cfg.task_name, sks[1:])
        # THEN the head stays at version 0 and no version 1 object was made visible
        task = await store.get_task(cfg.task_name)
        assert task["head_version"] == 0
        listed = await s3.list_objects_v2(
            Bucket=stack.endpoints.bucket, Prefix=keys.global_key(cfg.task_name, 1)
        )
        assert listed.get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("over", "oracle"),
    [
        ({"strategy": "median"}, "median"),  # held: spilled to /tmp as its chunks arrive
        ({"max_update_norm": 1e9}, "fedavg"),  # FedAvg that needs the head: add_chunk
    ],
    ids=["median-spilled", "fedavg-add-chunk"],
)
async def test_a_round_that_is_not_streamed_whole_still_reads_its_updates_by_ranges(
    moto_server, prefix, monkeypatch, over, oracle
):
    from fedasync.core.config import TaskConfig

    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _sizing(4096))
    monkeypatch.setattr(CACHE, "max_bytes", 0)  # a cold container: nothing folded from memory
    async with _no_pump(moto_server, prefix) as stack:
        # GIVEN a sync task whose close needs its updates through the strategy's fold (a
        # median holds them all; a norm bound checks the FedAvg against the head)
        cfg = TaskConfig.parse(
            {"task_name": "ranged-fold", "mode": "sync", "clients": list(CLIENTS), "rounds": 1,
             "min_clients": 3, **over}
        )  # fmt: skip
        store, x0 = store_for(stack), _mixed()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        clients = clients_for(stack)
        records = [await c.submit(await first_notice(c)) for c in clients]
        sks = [keys.update_sk(r.client_id, r.update_id, r.round_id) for r in records]
        # WHEN the round is decided and closes, every update read again by ranged GETs
        assert await decide_run(store, cfg.task_name, sks) == 3
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        # THEN version 1 is the oracle's: the element-wise median of three (one of them,
        # exactly), or the FedAvg by hand
        models = [local_model(x0, i, 0) for i in range(3)]
        expected = (
            {k: np.median(np.stack([m[k] for m in models]), axis=0).astype(v.dtype)
             for k, v in x0.items()}
            if oracle == "median"
            else _by_hand(models, EXAMPLES)
        )  # fmt: skip
        got = codec.decode(await store.get_object(keys.global_key(cfg.task_name, 1)))
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)
