"""The round item's tally of its clients' word (`members.Tally`) is only a hint of when to
look: a crash between a run's verdicts and their count, or a squatter's junk, never
closes a round early or holds it to its deadline. On the embedded stack, real ASL."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.items.round import SETTLED
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.faults.harness import CLIENTS, EXAMPLES, config, drive, stack_for
from tests.faults.test_dead_silo import FIVE, FIVE_EXAMPLES, killed_mid_training, live_silo
from tests.faults.test_examples_bound import ledger_chain, sha_of
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)


class InjectedCrashError(RuntimeError):
    pass


def crash_the_count(monkeypatch: pytest.MonkeyPatch, when: str, times: int) -> list[str]:
    """Make the write that adds a run's clients to a ROUND item's tally crash `times`
    times, before it reaches AWS or right after; returns the log of crashes."""
    real = ServerStore.update
    fired: list[str] = []

    @functools.wraps(real)
    async def wrapped(store: ServerStore, op: dict[str, Any]) -> bool:
        counting = (
            op["Key"]["sk"]["S"].startswith(keys.ROUND_PREFIX)
            and SETTLED in op["ExpressionAttributeNames"].values()
        )
        if counting and when == "before" and len(fired) < times:
            fired.append(when)
            raise InjectedCrashError("crash between the verdicts and their count")
        result = await real(store, op)
        if counting and when == "after" and len(fired) < times:
            fired.append(when)
            raise InjectedCrashError("crash right after the count reached AWS")
        return result

    monkeypatch.setattr(ServerStore, "update", wrapped)
    return fired


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_crash_around_the_count_is_repaired_by_the_retry_not_the_deadline(
    moto_server, prefix, monkeypatch, when
):
    # GIVEN a 2-round sync task of 3 silos whose only check of a round is at its 60 s
    # deadline, and an aggregator that crashes twice around the tally's write (after the
    # run's verdicts are written)
    fired = crash_the_count(monkeypatch, when, times=2)
    cfg = config("sync", f"tally-{when}")
    async with stack_for(moto_server, prefix) as stack:
        # WHEN every silo answers every round
        got = await drive(stack, cfg)
        store = store_for(stack)
        # THEN the crashes happened and the task SUCCEEDED well before any deadline: the
        # redelivered records counted their (kept) verdicts again and closed each round
        assert fired == [when, when]
        assert got.status == "SUCCEEDED", got.cause
        for round_id in (0, 1):
            item = await store.get_item(cfg.task_name, keys.round_sk(round_id))
            assert float(item["closed_at"]) - float(item["opened_at"]) < 30
            assert item[SETTLED] == set(CLIENTS)
            assert item["members"] == [keys.update_sk(c, "", round_id) for c in CLIENTS]
        # AND every update was accepted once and the versions are FedAvg by hand
        assert (got.accepted, got.rejected) == (6, 0)
        x1 = fedavg_by_hand([local_model(initial_model(), i, 0) for i in range(3)], EXAMPLES)
        x2 = fedavg_by_hand([local_model(x1, i, 1) for i in range(3)], EXAMPLES)
        assert await ledger_chain(store, cfg.task_name) == {1: sha_of(x1), 2: sha_of(x2)}


async def test_a_dead_silo_is_dropped_at_the_last_live_verdict_with_one_query_a_round(
    moto_server, prefix, monkeypatch
):
    # GIVEN a 1-round sync task of 5 silos whose only check is at its 60 s deadline (so
    # no check_round drops anyone), the default quorum (3 of 5), and a count of the
    # queries of the round's updates
    queried: list[str] = []
    real = ServerStore.query_prefix

    @functools.wraps(real)
    async def counted(store: ServerStore, task_name: str, prefix: str) -> Any:
        queried.append(prefix)
        return await real(store, task_name, prefix)

    monkeypatch.setattr(ServerStore, "query_prefix", counted)
    cfg = TaskConfig.parse(
        {"task_name": "dead-batch", "clients": list(FIVE), "rounds": 1,
         "round_timeout_s": 60, "round_check_s": 60}
    )  # fmt: skip
    async with stack_for(moto_server, prefix, clients=FIVE) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        *alive, doomed = clients_for(stack, FIVE, FIVE_EXAMPLES)
        # WHEN s4 says `stopped` mid-training and the other four answer
        await killed_mid_training(doomed, cfg.task_name, "stopped")
        await asyncio.wait_for(asyncio.gather(*(live_silo(c, cfg.task_name) for c in alive)), 60)
        desc = await wait_execution(stack, arn, timeout_s=60)
        round_queries = queried.count(f"{keys.UPDATE_PREFIX}00000000#")
        # THEN the round closed at the last live verdict, s4 dropped, long before 60 s
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        item = await store.get_item(cfg.task_name, keys.round_sk(0))
        assert item["result"]["dropped"] == ["s4"]
        assert float(item["closed_at"]) - float(item["opened_at"]) < 30
        # AND the server queried the round's updates once, for its close: the batches
        # before it looked at the tally (and a live heartbeat) only
        assert round_queries == 1
        x1 = fedavg_by_hand(
            [local_model(initial_model(), i, 0) for i in range(4)], FIVE_EXAMPLES[:4]
        )
        assert await ledger_chain(store, cfg.task_name) == {1: sha_of(x1)}
