"""Sync rounds on the embedded stack: the real ASL on moto, the real handlers, FedAvg checked by hand."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.integration.scripted import ScriptedClient, local_model

CLIENTS = ("hospital-a", "bank-b", "dc-c")
EXAMPLES = (10, 30, 60)


def initial_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense/kernel": rng.normal(size=(4, 3)).astype(np.float32),
        "dense/bias": np.zeros(3, np.float32),
    }


def fedavg_by_hand(
    models: list[dict[str, np.ndarray]], ns: tuple[int, ...]
) -> dict[str, np.ndarray]:
    total = sum(ns)
    return {
        k: (
            sum(n * m[k].astype(np.float64) for m, n in zip(models, ns, strict=True)) / total
        ).astype(np.float32)
        for k in models[0]
    }


@pytest.fixture
async def stack(moto_server, prefix):
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


def store_for(stack: EmbeddedStack) -> ServerStore:
    e = stack.endpoints
    return ServerStore(stack.aws, e)


def clients_for(stack: EmbeddedStack, ids=CLIENTS, examples=EXAMPLES) -> list[ScriptedClient]:
    e = stack.endpoints
    return [
        ScriptedClient(
            stack.principal_aws(f"client:{c}"), e.bucket, e.table, e.client_queue_urls[c], c, i, n
        )
        for i, (c, n) in enumerate(zip(ids, examples, strict=True))
    ]


async def run_client(client: ScriptedClient, stop_after: int | None = None) -> None:
    """Answer every round notice until the final one (or `stop_after` rounds)."""
    answered = 0
    while True:
        notice = await client.poll()
        if notice is None:
            continue
        if notice.final or (stop_after is not None and answered >= stop_after):
            return
        await client.submit(notice)
        answered += 1


async def wait_execution(stack: EmbeddedStack, arn: str, timeout_s: float = 60) -> dict:
    sfn = await stack.aws.sfn()
    for _ in range(int(timeout_s / 0.1)):
        desc = await sfn.describe_execution(executionArn=arn)
        if desc["status"] != "RUNNING":
            return desc
        await asyncio.sleep(0.1)
    raise AssertionError(f"execution still RUNNING after {timeout_s} s")


async def test_three_rounds_give_fedavg_versions_and_the_execution_succeeds(stack):
    # GIVEN a sync task of 3 rounds with 3 clients holding 10, 30 and 60 examples
    cfg = TaskConfig.parse(
        {"task_name": "digits", "clients": list(CLIENTS), "rounds": 3, "round_timeout_s": 60}
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN every client answers every round
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 60)
    desc = await wait_execution(stack, arn)
    # THEN each global version is FedAvg of the clients' models, computed here by hand
    expected = initial_model()
    for version in range(1, 4):
        models = [local_model(expected, i, version - 1) for i in range(3)]
        expected = fedavg_by_hand(models, EXAMPLES)
        got = codec.decode(await store.get_object(keys.global_key("digits", version)))
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    assert desc["status"] == "SUCCEEDED"
    task = await store.get_task("digits")
    assert task["status"] == "SUCCEEDED"
    assert task["head_version"] == 3
    final = await store.get_object(keys.final_key("digits"))
    assert codec.sha256_bytes(final) == task["head_sha256"]
