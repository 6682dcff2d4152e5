"""A dead silo does not hold a sync round to its deadline, and one rejection does not fail
the task: on the embedded stack, the real ASL checking the round every `round_check_s`."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from fedasync.aws.records import serialize_item
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import Heartbeat
from fedasync.server.tasks import start_task
from tests.faults.harness import next_notice, stack_for
from tests.faults.test_examples_bound import ledger_chain, sha_of
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)

FIVE = ("s0", "s1", "s2", "s3", "s4")
FIVE_EXAMPLES = (10, 20, 30, 40, 50)
TIMEOUT_S = 60


async def beat(client: ScriptedClient, task_name: str, status: str, ttl_s: float) -> None:
    """The silo's heartbeat item, as its client writes it (`client/heartbeat.py`)."""
    now = time.time()
    heartbeat = Heartbeat(
        task_name=task_name,
        client_id=client.client_id,
        sent_at=now,
        expires_at=int(now + ttl_s),
        status=status,  # type: ignore[arg-type]
    )
    ddb = await client.aws.dynamodb()
    item = {"sk": heartbeat.sk, **heartbeat.model_dump(exclude_none=True)}
    await ddb.put_item(TableName=client.table, Item=serialize_item(item))


async def live_silo(client: ScriptedClient, task_name: str) -> int:
    """Beat, answer every round, until the final notice; returns the rounds answered."""
    answered = 0
    while not (notice := await next_notice(client, task_name)).final:
        await beat(client, task_name, "training", ttl_s=30)
        await client.submit(notice)
        answered += 1
    return answered


async def killed_mid_training(client: ScriptedClient, task_name: str, last_word: str) -> None:
    """Take round 0's notice, beat once (`training`, 2 s TTL, or `stopped`), download the
    model and vanish: no update, no more beats, as a killed process."""
    notice = await next_notice(client, task_name)
    await beat(client, task_name, last_word, ttl_s=2 if last_word == "training" else 3600)
    await client.download(notice.s3_key)


@pytest.mark.parametrize("last_word", ["training", "stopped"], ids=["lapsed", "said-stopped"])
async def test_a_silo_killed_mid_training_is_dropped_and_the_round_closes_early(
    moto_server, prefix, last_word
):
    # GIVEN a 2-round sync task of 5 silos, a 60 s round deadline checked every second,
    # and the default quorum (3 of 5)
    cfg = TaskConfig.parse(
        {"task_name": "dead", "clients": list(FIVE), "rounds": 2,
         "round_timeout_s": TIMEOUT_S, "round_check_s": 1}
    )  # fmt: skip
    assert cfg.quorum == 3
    async with stack_for(moto_server, prefix, clients=FIVE) as stack:
        store = store_for(stack)
        started = time.monotonic()
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        *alive, doomed = clients_for(stack, FIVE, FIVE_EXAMPLES)
        # WHEN s4 is killed mid-training in round 0 and the other four work normally
        await killed_mid_training(doomed, "dead", last_word)
        answered = await asyncio.wait_for(
            asyncio.gather(*(live_silo(c, "dead") for c in alive)), TIMEOUT_S
        )
        desc = await wait_execution(stack, arn, timeout_s=TIMEOUT_S)
        elapsed = time.monotonic() - started
        # THEN each round closed with the four, s4 recorded as dropped, well before its
        # deadline (round 0 once s4's heartbeat lapsed and a check saw it)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        for round_id in (0, 1):
            item = await store.get_item("dead", keys.round_sk(round_id))
            assert item["result"]["dropped"] == ["s4"]
            assert item["members"] == [keys.update_sk(c, "", round_id) for c in FIVE[:4]]
            took = float(item["closed_at"]) - float(item["opened_at"])
            print(f"round {round_id} closed {took:.2f} s after it opened ({last_word})")
            assert took < 15
        assert elapsed < TIMEOUT_S
        # AND versions 1 and 2 are FedAvg of the four (by hand), as the ledger records
        x1 = fedavg_by_hand(
            [local_model(initial_model(), i, 0) for i in range(4)], FIVE_EXAMPLES[:4]
        )
        x2 = fedavg_by_hand([local_model(x1, i, 1) for i in range(4)], FIVE_EXAMPLES[:4])
        assert await ledger_chain(store, "dead") == {1: sha_of(x1), 2: sha_of(x2)}
        # AND the live silos were served every round and the final model
        assert answered == [2, 2, 2, 2]
        assert not await store.query_prefix("dead", f"{keys.UPDATE_PREFIX}00000000#s4")


async def test_one_rejected_update_counts_against_the_quorum_not_as_a_failure(moto_server, prefix):
    # GIVEN a 1-round sync task of 3 silos with the default quorum (2 of 3)
    clients_ids = ("a", "b", "c")
    cfg = TaskConfig.parse({"task_name": "nan", "clients": list(clients_ids), "rounds": 1})
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, c = clients_for(stack, clients_ids, (10, 30, 60))
        # WHEN a sends NaN weights and b, c honest updates
        poisoned = {k: np.full_like(v, np.nan) for k, v in initial_model().items()}
        await a.submit(await next_notice(a, "nan"), poisoned)
        for client in (b, c):
            await client.submit(await next_notice(client, "nan"))
        desc = await wait_execution(stack, arn, timeout_s=30)
        # THEN a is rejected with its reason, and the round closed at once with b and c
        item = await store.get_item("nan", keys.update_sk("a", "", 0))
        assert (item["verdict"], item["reason"]) == ("rejected", "non_finite")
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        x0 = initial_model()
        x1 = fedavg_by_hand([local_model(x0, 1, 0), local_model(x0, 2, 0)], (30, 60))
        assert await ledger_chain(store, "nan") == {1: sha_of(x1)}
