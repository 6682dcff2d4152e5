"""Half-precision delta uploads (`update_encoding`) on the embedded stack: a float32 task
whose silos send half(local - global), sync FedAvg rounds and async FedAsync / FedBuff
updates, every new global worked out by hand from the half deltas, replay byte for byte,
and a delta that is not of its record's base version rejected with the head intact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from client.delta_upload import write_delta
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.deltas import write_delta_file
from fedasync.core.errors import ConfigError
from fedasync.server.tasks import start_task
from tests.integration.test_server_async import CLIENTS as ASYNC_CLIENTS
from tests.integration.test_server_async import first_notice, make_stack, verdict
from tests.integration.test_server_async_screening import _replayed
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    initial_model,
    stack,  # noqa: F401  (the fixture)
    store_for,
    wait_execution,
)
from tests.unit.test_deltas import nearest_by_table

HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def trained(global_w: dict, client_index: int, version: int) -> dict:
    """A fake training step with changes fp16 cannot hold exactly (~1e-2, random)."""
    rng = np.random.default_rng(100 * version + client_index)
    return {k: (v + rng.normal(0, 1e-2, v.shape)).astype(np.float32) for k, v in global_w.items()}


def half_by_hand(local: dict, base: dict, dtype: str) -> dict:
    """The half delta, rounded to nearest even by table lookup (independent of the code)."""
    return {
        k: nearest_by_table(local[k].astype(np.float64) - base[k].astype(np.float64), dtype)
        for k in base
    }


def local_by_hand(base: dict, half: dict) -> dict:
    """What the server must read a delta as: float32(base + float32(delta))."""
    return {k: base[k] + half[k].astype(np.float32) for k in base}


def data_bytes(blob: bytes) -> int:
    return len(blob) - 8 - int.from_bytes(blob[:8], "little")


async def submit_delta(client, notice, tmp_path: Path, local: dict, **over):
    """Upload what the silo's own encoder writes (client.delta_upload) with its record."""
    path = tmp_path / f"{client.client_id}-{notice.version}.safetensors"
    global_w = await client.download(notice.s3_key)
    _, dtype = write_delta(local, global_w, path, notice)
    return await client.submit(notice, blob=path.read_bytes(), delta_dtype=dtype, **over)


async def test_sync_rounds_of_fp16_deltas_average_base_plus_delta(stack, tmp_path):
    # GIVEN a float32 sync task of 2 rounds with update_encoding float16, 3 silos with 10,
    # 30 and 60 examples, each sending the fp16 delta of its local model
    cfg = TaskConfig.parse(
        {"task_name": "d16", "clients": list(CLIENTS), "rounds": 2, "round_timeout_s": 60,
         "update_encoding": {"dtype": "float16"}}
    )  # fmt: skip
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    silos = clients_for(stack)

    async def answer(client):
        while True:
            notice = await client.poll()
            if notice is None:
                continue
            if notice.final:
                return
            # the notice tells the silo to send deltas
            assert notice.update_encoding is not None
            assert notice.update_encoding.dtype == "float16"
            local = trained(await client.download(notice.s3_key), client.index, notice.version)
            await submit_delta(client, notice, tmp_path, local)

    # WHEN every silo answers every round
    await asyncio.wait_for(asyncio.gather(*(answer(c) for c in silos)), 90)
    desc = await wait_execution(stack, arn)
    assert desc["status"] == "SUCCEEDED"
    # THEN each version is FedAvg (float64, by num_examples) of base + float32(fp16 delta)
    expected = initial_model()
    for version in (1, 2):
        base = expected
        locals_ = [trained(base, i, version - 1) for i in range(3)]
        models = [local_by_hand(base, half_by_hand(m, base, "float16")) for m in locals_]
        expected = {
            k: (sum(n * m[k].astype(np.float64) for m, n in zip(models, EXAMPLES, strict=True))
                / sum(EXAMPLES)).astype(np.float32)
            for k in base
        }  # fmt: skip
        got = codec.decode(await store.get_object(keys.global_key("d16", version)))
        for name in expected:
            assert got[name].dtype == np.float32
            assert got[name].tobytes() == expected[name].tobytes()
    # AND each uploaded object is half the float32 model's data (plus its header)
    _, result, blobs = await _replayed(store, "d16")
    uploads = [b for k, b in blobs.items() if "/local/" in k]
    assert len(uploads) == 6
    full = data_bytes(codec.encode(initial_model()))
    assert all(data_bytes(b) == full // 2 for b in uploads)
    # AND replay rebuilds every version byte for byte from the recorded deltas
    assert result.ok, (result.problems, result.mismatches)
    assert result.final_version == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
async def test_a_fedasync_delta_is_mixed_as_base_plus_delta(moto_server, prefix, wait_until,
                                                            tmp_path, dtype):  # fmt: skip
    # GIVEN an async FedAsync task (alpha 0.5, constant staleness, 1 version) with deltas
    cfg = TaskConfig.parse(
        {"task_name": "da", "mode": "async", "clients": list(ASYNC_CLIENTS), "alpha": 0.5,
         "staleness": "constant", "max_versions": 1, "update_encoding": {"dtype": dtype}}
    )  # fmt: skip
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, _ = clients_for(stack, ASYNC_CLIENTS, (5, 5, 5))
        na, nb = await first_notice(a), await first_notice(b)
        x0 = initial_model()
        # WHEN a sends a delta its object says is of version 5 (its record: version 0)
        bad = tmp_path / "bad.safetensors"
        write_delta_file(half_by_hand(trained(x0, 0, 0), x0, dtype), bad, 5, dtype)
        await a.submit(na, blob=bad.read_bytes(), delta_dtype=dtype)
        # THEN it is rejected, saying why, and the head stays at version 0
        rejected = await verdict(store, "da", keys.update_sk("a", "a-v00000000", None), wait_until)
        assert (rejected["verdict"], rejected["reason"]) == ("rejected", "delta")
        assert "delta of version 5; its record names base version 0" in rejected["detail"]
        assert (await store.get_task("da"))["head_version"] == 0
        # WHEN b sends a good delta from version 0
        local = trained(x0, 1, 0)
        await submit_delta(b, nb, tmp_path, local)
        desc = await wait_execution(stack, arn)
        # THEN the final model is 0.5 x0 + 0.5 (x0 + float32(delta)) in float64, float32
        client_w = local_by_hand(x0, half_by_hand(local, x0, dtype))
        final = codec.decode(await store.get_object(keys.final_key("da")))
        for name, x in x0.items():
            mixed = 0.5 * x.astype(np.float64) + 0.5 * client_w[name].astype(np.float64)
            assert final[name].tobytes() == mixed.astype(np.float32).tobytes()
        assert desc["status"] == "SUCCEEDED"
        # AND replay rebuilds it from the ledger's records and objects
        _, result, _ = await _replayed(store, "da")
        assert result.ok, (result.problems, result.mismatches)


async def test_fedbuff_buffers_the_deltas_of_base_plus_delta(moto_server, prefix, wait_until,
                                                              tmp_path):  # fmt: skip
    # GIVEN FedBuff with K = 2, server_lr 1, 1 version, fp16 deltas
    cfg = TaskConfig.parse(
        {"task_name": "db", "mode": "async", "strategy": "fedbuff", "clients": list(ASYNC_CLIENTS),
         "buffer_size": 2, "server_lr": 1.0, "max_versions": 1,
         "update_encoding": {"dtype": "float16"}}
    )  # fmt: skip
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, _ = clients_for(stack, ASYNC_CLIENTS, (5, 5, 5))
        na, nb = await first_notice(a), await first_notice(b)
        x0 = initial_model()
        # WHEN a and b both send fp16 deltas from version 0
        la, lb = trained(x0, 0, 0), trained(x0, 1, 0)
        await submit_delta(a, na, tmp_path, la)
        await submit_delta(b, nb, tmp_path, lb)
        desc = await wait_execution(stack, arn)
        # THEN x1 = x0 + (dA + dB) / 2, each d = (x0 + float32(half)) - x0 in float64
        ca = local_by_hand(x0, half_by_hand(la, x0, "float16"))
        cb = local_by_hand(x0, half_by_hand(lb, x0, "float16"))
        expected = {
            k: (x0[k] + ((ca[k].astype(np.float64) - x0[k]) + (cb[k].astype(np.float64) - x0[k]))
                / 2).astype(np.float32)
            for k in x0
        }  # fmt: skip
        got = codec.decode(await store.get_object(keys.final_key("db")))
        for name in expected:
            assert got[name].tobytes() == expected[name].tobytes()
        assert desc["status"] == "SUCCEEDED"


async def test_task_start_refuses_deltas_for_a_model_that_is_not_float32(stack):
    # GIVEN a task with update_encoding and a bfloat16 initial model
    cfg = TaskConfig.parse(
        {"task_name": "dbf", "clients": list(CLIENTS), "update_encoding": {"dtype": "float16"}}
    )
    model = {k: v.astype(ml_dtypes.bfloat16) for k, v in initial_model().items()}
    # THEN task start refuses it, saying why, before anything is created
    store = store_for(stack)
    with pytest.raises(ConfigError, match="is for float32 models"):
        await start_task(store, stack.endpoints.state_machine_arn, cfg, model)
    assert await store.get_task("dbf") is None


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
async def test_a_cold_close_reads_each_delta_again_as_base_plus_delta(
    stack, tmp_path, monkeypatch, strategy
):
    # GIVEN a one-round sync task of fp16 deltas, FedAvg or the element-wise median, on a
    # cold container (nothing folded from memory: each update is read again at the close)
    from fedasync.server.cache import CACHE

    monkeypatch.setattr(CACHE, "max_bytes", 0)
    cfg = TaskConfig.parse(
        {"task_name": "dcold", "clients": list(CLIENTS), "rounds": 1, "round_timeout_s": 60,
         "min_clients": 3, "strategy": strategy, "update_encoding": {"dtype": "float16"}}
    )  # fmt: skip
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    x0 = initial_model()
    # WHEN the three silos send their fp16 deltas from version 0
    for client in clients_for(stack):
        notice = await first_notice(client)
        await submit_delta(client, notice, tmp_path, trained(x0, client.index, 0))
    assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
    # THEN version 1 is the strategy over the locals x0 + float32(delta), by hand
    models = [local_by_hand(x0, half_by_hand(trained(x0, i, 0), x0, "float16")) for i in range(3)]
    if strategy == "median":
        expected = {k: np.median(np.stack([m[k] for m in models]), axis=0).astype(np.float32)
                    for k in x0}  # fmt: skip
    else:
        expected = {
            k: (sum(n * m[k].astype(np.float64) for m, n in zip(models, EXAMPLES, strict=True))
                / sum(EXAMPLES)).astype(np.float32)
            for k in x0
        }  # fmt: skip
    got = codec.decode(await store.get_object(keys.global_key("dcold", 1)))
    for name in expected:
        assert got[name].tobytes() == expected[name].tobytes()
