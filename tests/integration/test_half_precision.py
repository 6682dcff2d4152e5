"""bf16 and fp16 models through sync rounds and an async update on the embedded stack, by hand."""

from __future__ import annotations

import asyncio

import ml_dtypes
import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (
    CLIENTS,
    EXAMPLES,
    clients_for,
    run_client,
    stack,  # noqa: F401  (the fixture)
    store_for,
    wait_execution,
)


def half_model(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense/kernel": rng.normal(size=(4, 3)).astype(dtype),
        "dense/bias": np.zeros(3, dtype),
    }


def fedavg_by_hand(models: list[dict[str, np.ndarray]], dtype) -> dict[str, np.ndarray]:
    """sum(n_i * float64(x_i)) / sum(n_i), then cast to the model's dtype."""
    total = sum(EXAMPLES)
    return {
        k: (
            sum(n * m[k].astype(np.float64) for m, n in zip(models, EXAMPLES, strict=True)) / total
        ).astype(dtype)
        for k in models[0]
    }


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "fp16"])
async def test_half_precision_sync_rounds_average_and_stay_in_the_models_dtype(stack, dtype):
    # GIVEN a sync task of 2 rounds whose initial model is bf16 (or fp16), 3 clients with
    # 10, 30 and 60 examples, each answering with a model in the global's dtype
    cfg = TaskConfig.parse(
        {"task_name": "half", "clients": list(CLIENTS), "rounds": 2, "round_timeout_s": 60}
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, half_model(dtype))
    # WHEN every client answers every round
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 90)
    desc = await wait_execution(stack, arn)
    # THEN each global version is FedAvg of the clients' models in float64, written back in
    # the model's dtype (the header says BF16/F16), and the execution succeeds
    expected = half_model(dtype)
    for version in (1, 2):
        models = [local_model(expected, i, version - 1) for i in range(3)]
        expected = fedavg_by_hand(models, dtype)
        blob = await store.get_object(keys.global_key("half", version))
        got = codec.decode(blob)
        for name in expected:
            assert got[name].dtype == dtype
            assert got[name].tobytes() == expected[name].tobytes()
    assert desc["status"] == "SUCCEEDED"
    assert (await store.get_task("half"))["head_version"] == 2


async def test_a_bf16_fedasync_update_is_mixed_in_float64_and_stays_bf16(moto_server, prefix):
    # GIVEN an async FedAsync task (alpha 0.5, constant staleness, 1 version) on a bf16 model
    cfg = TaskConfig.parse(
        {"task_name": "half-async", "mode": "async", "clients": list(CLIENTS), "alpha": 0.5}
        | {"staleness": "constant", "max_versions": 1}
    )
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        x0 = half_model(ml_dtypes.bfloat16)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        client = clients_for(stack)[0]
        # WHEN the first client submits a bf16 update trained from version 0
        notice = None
        while notice is None:
            notice = await client.poll()
        await client.submit(notice)
        desc = await wait_execution(stack, arn)
        # THEN the final model is 0.5 x0 + 0.5 x_client in float64, cast to bf16
        x_client = local_model(x0, 0, 0)
        final = codec.decode(await store.get_object(keys.final_key("half-async")))
        for name, x in x0.items():
            mixed = 0.5 * x.astype(np.float64) + 0.5 * x_client[name].astype(np.float64)
            assert final[name].dtype == ml_dtypes.bfloat16
            assert final[name].tobytes() == mixed.astype(ml_dtypes.bfloat16).tobytes()
        assert desc["status"] == "SUCCEEDED"
