"""The round item's tally of its clients' word (`members.Tally`) is only a hint of when to
look: a crash between a run's verdicts and their count, or a squatter's junk, never
closes a round early or holds it to its deadline. On the embedded stack, real ASL."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from fedasync.core import keys
from fedasync.server.members import SETTLED
from fedasync.server.store import ServerStore
from tests.faults.harness import CLIENTS, EXAMPLES, config, drive, stack_for
from tests.faults.test_examples_bound import ledger_chain, sha_of
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import fedavg_by_hand, initial_model, store_for


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
