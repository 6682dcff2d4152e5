"""Hostile `num_examples` on the embedded stack: a silo claiming more than the task allows
is rejected with its reason and FedAvg is what the honest silos give; a round whose
accepted updates all claim 0 examples fails the task with a cause, never a poison record."""

from __future__ import annotations

import asyncio

from fedasync.core import codec, keys
from fedasync.core.config import DEFAULT_MAX_NUM_EXAMPLES, TaskConfig
from fedasync.core.ledger import build_ledger
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.faults.harness import CLIENTS, EXAMPLES, next_notice, stack_for
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)


async def ledger_chain(store: ServerStore, task_name: str) -> dict[int, str]:
    """The global versions the ledger records (version -> SHA-256), built from the table."""
    items = [await store.get_task(task_name)]
    for prefix in (keys.UPDATE_PREFIX, keys.ROUND_PREFIX):
        items += await store.query_prefix(task_name, prefix)
    events = build_ledger(i for i in items if i is not None)
    return {e["version"]: e["sha256"] for e in events if e["kind"] == "version"}


def sha_of(weights: dict) -> str:
    return codec.sha256_bytes(codec.encode(weights))


async def play_round(client: ScriptedClient, task_name: str, **record_over: object) -> int:
    """Answer the next round notice (with `record_over` fields on the record); its round."""
    notice = await next_notice(client, task_name)
    assert not notice.final
    await client.submit(notice, **record_over)
    return int(notice.round_id or 0)


async def test_an_update_claiming_too_many_examples_is_rejected_and_fedavg_is_the_honest_ones(
    moto_server, prefix
):
    # GIVEN a 2-round sync task of silos a, b, c (10, 30, 60 examples), quorum 2, and the
    # default bound on the examples an update may claim
    cfg = TaskConfig.parse(
        {"task_name": "ne", "clients": list(CLIENTS), "rounds": 2, "min_clients": 2}
    )
    assert cfg.max_num_examples == DEFAULT_MAX_NUM_EXAMPLES == 100_000_000
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, c = clients_for(stack, CLIENTS, EXAMPLES)
        # WHEN a claims 10^18 examples in round 0, b and c are honest, then all three are
        first = (play_round(a, "ne", num_examples=10**18), play_round(b, "ne"), play_round(c, "ne"))
        await asyncio.wait_for(asyncio.gather(*first), 30)
        await asyncio.wait_for(asyncio.gather(*(play_round(x, "ne") for x in (a, b, c))), 30)
        desc = await wait_execution(stack, arn, timeout_s=30)
        # THEN a's round-0 update is rejected with its reason and a detail naming the bound
        bad = await store.get_item("ne", keys.update_sk("a", "", 0))
        assert (bad["verdict"], bad["reason"]) == ("rejected", "too_many_examples")
        assert "claims 1000000000000000000 examples" in bad["detail"]
        assert "at most 100000000 (max_num_examples)" in bad["detail"]
        # AND version 1 is FedAvg of b and c alone, version 2 of all three (by hand), and
        # the ledger's chain of global models is exactly those
        x0 = initial_model()
        x1 = fedavg_by_hand([local_model(x0, 1, 0), local_model(x0, 2, 0)], EXAMPLES[1:])
        x2 = fedavg_by_hand([local_model(x1, i, 1) for i in range(3)], EXAMPLES)
        assert await ledger_chain(store, "ne") == {1: sha_of(x1), 2: sha_of(x2)}
        # AND the honest silos (a too, once honest) kept being served: the task succeeded
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        assert (await store.get_task("ne"))["final_sha256"] == sha_of(x2)


async def test_a_round_whose_updates_all_claim_zero_examples_fails_the_task_with_a_cause(
    moto_server, prefix
):
    # GIVEN a 2-round sync task whose round 0 closes normally
    cfg = TaskConfig.parse({"task_name": "nz", "clients": list(CLIENTS), "rounds": 2})
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = clients_for(stack, CLIENTS, EXAMPLES)
        await asyncio.wait_for(asyncio.gather(*(play_round(x, "nz") for x in clients)), 30)
        # WHEN every silo's round-1 update claims 0 examples
        await asyncio.wait_for(
            asyncio.gather(*(play_round(x, "nz", num_examples=0) for x in clients)), 30
        )
        desc = await wait_execution(stack, arn, timeout_s=30)
        # THEN the updates were accepted (0 examples is a valid claim), but the round
        # cannot be averaged: the task FAILED with that cause, recorded on the TASK item
        cause = (
            "round 1 of task 'nz' cannot be aggregated: its 3 accepted update(s) report 0 "
            "examples in total; FedAvg needs at least one example"
        )
        assert (desc["status"], desc.get("cause")) == ("FAILED", cause)
        task = await store.get_task("nz")
        assert (task["status"], task["cause"], task["head_version"]) == ("FAILED", cause, 1)
        # AND no handler failed on a poison record: every batch was handled
        assert stack.stream_pump.failed_batches == []
        # AND the chain of global models is version 1 alone, as round 0 made it
        x0 = initial_model()
        x1 = fedavg_by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        assert await ledger_chain(store, "nz") == {1: sha_of(x1)}
        assert keys.global_key("nz", 2) not in {
            o["Key"]
            for o in (
                await (await stack.aws.s3()).list_objects_v2(Bucket=stack.endpoints.bucket)
            ).get("Contents", [])
        }
