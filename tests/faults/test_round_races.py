"""A round's deadline close racing an accept, on the embedded stack over HTTP.

The aggregate handler is the real `on_update`, called here so that each step can be held
at a chosen write: the accept has read the round item (still open) and is about to write
its verdict when the close runs. Whichever wins, an update is accepted if and only if it
is a member of the round that closes, and the global model is FedAvg of the members.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.server import rounds
from fedasync.server.finish import finish_task
from fedasync.server.store import ServerStore, transaction_failure
from fedasync.server.task_view import TaskView
from fedasync.server.tasks import start_task
from fedasync.server.updates import on_update
from tests.faults.harness import CLIENTS, EXAMPLES, next_notice, stack_for
from tests.faults.test_examples_bound import ledger_chain, sha_of
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)


def ignore(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The stream's handler, idle: each test decides its updates itself, step by step."""
    return {"batchItemFailures": []}


class Gated(ServerStore):
    """The real store, holding its conditional `verdict` writes until `go` is set."""

    def __init__(self, store: ServerStore, verdict: str) -> None:
        super().__init__(store.aws, store.where)
        self.verdict = verdict
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def update(self, op: dict[str, Any]) -> bool:
        values = op.get("ExpressionAttributeValues", {}).values()
        if "#verdict" in op["ConditionExpression"] and {"S": self.verdict} in values:
            self.reached.set()
            await self.go.wait()
        return await super().update(op)


async def open_round(stack, store: ServerStore, name: str):
    """A 1-round task (quorum 1) whose round 0 is open; a's update accepted, b's written."""
    cfg = TaskConfig.parse(
        {"task_name": name, "clients": list(CLIENTS), "rounds": 1, "min_clients": 1,
         "round_timeout_s": 120, "round_check_s": 120}
    )  # fmt: skip
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    a, b, c = clients_for(stack, CLIENTS, EXAMPLES)
    record_a = await a.submit(await next_notice(a, name))
    record_b = await b.submit(await next_notice(b, name))
    assert await on_update(store, name, record_a.sk) == "accepted"
    return arn, (a, b, c), record_b.sk


async def final_notice(client, name: str) -> None:
    while not (await next_notice(client, name)).final:
        pass


async def deadline_close(store: ServerStore, name: str) -> dict[str, Any]:
    view = TaskView.from_item(name, await store.get_task(name))
    return await rounds.close_round(store, view, 0, token=None, at_deadline=True)


async def test_a_deadline_close_that_wins_the_race_rejects_the_late_accept(moto_server, prefix):
    async with stack_for(moto_server, prefix, handler=ignore) as stack:
        store = store_for(stack)
        arn, clients, sk_b = await open_round(stack, store, "race")
        # GIVEN b's accept has read the open round and is about to write its verdict
        accepting = Gated(store, "accepted")
        accept_b = asyncio.create_task(on_update(accepting, "race", sk_b))
        await asyncio.wait_for(accepting.reached.wait(), 20)
        # WHEN the round's deadline close runs to its end, and only then b's write
        result = await deadline_close(store, "race")
        accepting.go.set()
        # THEN b is rejected as too late (reason closed_round), and is no member
        assert await asyncio.wait_for(accept_b, 20) == "rejected"
        item_b = await store.get_item("race", sk_b)
        assert (item_b["verdict"], item_b["reason"]) == ("rejected", "closed_round")
        assert "still undecided when round 0 closed" in item_b["detail"]
        round_item = await store.get_item("race", keys.round_sk(0))
        assert round_item["members"] == [keys.update_sk("a", "", 0)]
        # AND version 1 is a's model alone (FedAvg of one, by hand), the ledger's chain too
        expected = fedavg_by_hand([local_model(initial_model(), 0, 0)], EXAMPLES[:1])
        assert (result["closed"], result["accepted"]) == (True, 1)
        assert await ledger_chain(store, "race") == {1: sha_of(expected)}
        # AND every silo is served the final model; the execution succeeded
        for client in clients:
            await asyncio.wait_for(final_notice(client, "race"), 20)
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"


async def test_an_accept_that_wins_the_race_is_a_member_of_the_closed_round(moto_server, prefix):
    async with stack_for(moto_server, prefix, handler=ignore) as stack:
        store = store_for(stack)
        arn, _, sk_b = await open_round(stack, store, "race2")
        # GIVEN b's accept has read the open round and holds its verdict write, and the
        # deadline close has sealed the round and found b undecided
        accepting = Gated(store, "accepted")
        accept_b = asyncio.create_task(on_update(accepting, "race2", sk_b))
        await asyncio.wait_for(accepting.reached.wait(), 20)
        closing = Gated(store, "rejected")
        close = asyncio.create_task(deadline_close(closing, "race2"))
        await asyncio.wait_for(closing.reached.wait(), 20)
        # WHEN b's accept writes first, then the close tries to reject it
        accepting.go.set()
        assert await asyncio.wait_for(accept_b, 20) == "accepted"
        closing.go.set()
        result = await asyncio.wait_for(close, 20)
        # THEN b stays accepted and is a member: version 1 is FedAvg of a and b (by hand)
        round_item = await store.get_item("race2", keys.round_sk(0))
        assert round_item["members"] == sorted(keys.update_sk(c, "", 0) for c in ("a", "b"))
        x0 = initial_model()
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(2)], EXAMPLES[:2])
        assert (result["closed"], result["accepted"]) == (True, 2)
        assert await ledger_chain(store, "race2") == {1: sha_of(expected)}
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"


async def test_a_round_closing_after_the_task_finished_is_not_committed(moto_server, prefix):
    async with stack_for(moto_server, prefix, handler=ignore) as stack:
        store = store_for(stack)
        await open_round(stack, store, "late")
        # GIVEN the task was finished (at version 0) while round 0 was still open
        await finish_task(store, "late", "operator", token=None)
        # WHEN the round closes with its accepted update
        result = await deadline_close(store, "late")
        # THEN nothing is committed: the head stays at version 0, and the round says why
        assert result["closed"] is False
        assert "was not committed: the task had finished (operator) at version 0" in result["cause"]
        task = await store.get_task("late")
        assert (task["head_version"], task["final_version"]) == (0, 0)
        assert await ledger_chain(store, "late") == {}


@pytest.mark.parametrize(
    ("code", "reasons", "meaning"),
    [
        ("ConditionalCheckFailedException", [], "done"),
        ("TransactionCanceledException", ["ConditionalCheckFailed", "None"], "done"),
        ("TransactionCanceledException", ["None", "ConditionalCheckFailed"], "done"),
        ("TransactionCanceledException", ["TransactionConflict", "None"], "retry"),
        ("TransactionCanceledException", ["None", "ThrottlingError"], "retry"),
        ("TransactionCanceledException", ["ProvisionedThroughputExceeded"], "retry"),
        ("TransactionCanceledException", ["ValidationError", "None"], "raise"),
        ("TransactionCanceledException", ["ItemCollectionSizeLimitExceeded"], "raise"),
        ("TransactionCanceledException", [], "raise"),
        ("TransactionConflictException", [], "retry"),
        ("ThrottlingException", [], "retry"),
        ("ValidationException", [], "raise"),
    ],
)
def test_only_a_failed_condition_means_a_transaction_was_done_already(code, reasons, meaning):
    # GIVEN a failed TransactWriteItems (codes as DynamoDB documents them)
    # WHEN its error is read THEN only a failed condition means "another try did it"
    assert transaction_failure(code, reasons) == meaning


async def test_a_transaction_whose_condition_fails_reports_it_done(moto_server, prefix):
    async with stack_for(moto_server, prefix, handler=ignore) as stack:
        store = store_for(stack)
        await open_round(stack, store, "tx")
        # GIVEN the TASK item at version 0 WHEN a commit expects version 5 THEN False
        op = store.update_op(
            "tx", keys.TASK_SK, {"head_version": 6},
            condition="#head_version = :v", condition_values={":v": 5},
        )  # fmt: skip
        assert await store.transact([op]) is False
        assert (await store.get_task("tx"))["head_version"] == 0
