"""Forged control messages (issue 19, item 1) on the embedded stack, over HTTP.

A forger here can put any JSON on the control queue (a mis-granted `sqs:SendMessage`),
the worst a silo can do there; it cannot read the queue, the server's items or the
execution. Each case sends its forgeries while the scripted task is open, then lets the
honest silos run it to the end: every forgery is logged with its reason and dropped (not
retried, never in the DLQ), the server's items do not move, and the run ends with exactly
the clean reference run's chain of global models (the ledger's SHA-256 values).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from fedasync.core import keys
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.events import export_ledger
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.faults.harness import (
    CLIENTS,
    EXAMPLES,
    Outcome,
    answer_rounds,
    assert_same_as,
    async_script,
    config,
    outcome_of,
    stack_for,
)
from tests.integration.test_server_sync import clients_for, initial_model, store_for, wait_execution

FORGED_TOKEN = "AAAAKgAAAAIAAAAAAAAAAforged" + "Zq7" * 30  # a Step Functions token's shape


def message(kind: str, task_name: str, token: str, **fields: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "kind": kind,
        "task_name": task_name,
        "task_token": token,
        **fields,
    }


def forgeries(kind: str, task_name: str, real_token: str) -> dict[str, dict[str, Any]]:
    """case -> body. `real_token`: the token of the task's open wait (as if it leaked)."""
    if kind == "sync":
        return {
            # fails the round at its "deadline" (quorum missed) before any silo answered
            "close_round": message("close_round", task_name, FORGED_TOKEN, round_id=0),
            # would replace the round's token: the real wait could never be answered
            "open_round": message("open_round", task_name, FORGED_TOKEN, round_id=0),
            # the round's real token does not make a close_round the execution never sent
            "close_round-with-the-open-token": message(
                "close_round", task_name, real_token, round_id=0
            ),
        }
    return {
        # ends the task now, with the initial model as final
        "finalize": message("finalize", task_name, FORGED_TOKEN, reason="timeout"),
        # would replace the task's completion token
        "open_task": message("open_task", task_name, FORGED_TOKEN),
        # the task's real token does not make a finalize the execution never sent
        "finalize-with-the-open-token": message("finalize", task_name, real_token, reason="idle"),
    }


async def open_wait_token(store: ServerStore, kind: str, task_name: str) -> str:
    """The token the genuine open message left on the server's item, once it is there."""
    sk = keys.round_sk(0) if kind == "sync" else keys.TASK_SK
    for _ in range(400):
        item = await store.get_item(task_name, sk) or {}
        if item.get("token"):
            return str(item["token"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_name}: the genuine open message was not handled")


async def server_items(store: ServerStore, task_name: str) -> list[dict[str, Any]]:
    return [
        await store.get_task(task_name) or {},
        *await store.query_prefix(task_name, keys.ROUND_PREFIX),
        *await store.query_prefix(task_name, keys.UPDATE_PREFIX),
    ]


async def send(stack: EmbeddedStack, body: dict[str, Any]) -> None:
    sqs = await stack.aws.sqs()
    await sqs.send_message(QueueUrl=stack.endpoints.control_queue_url, MessageBody=json.dumps(body))


# how the control handler ends with a message: dropped, or acted on (or failed doing so)
HANDLING = {"control.forged", "control.dropped", "control.handled", "control.failed"}


async def wait_logged(
    logged: list[dict[str, Any]], events: set[str], count: int, after: int = 0
) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(found := [e for e in list(logged)[after:] if e["event"] in events]) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} messages were handled"
        await asyncio.sleep(0.05)
    return found


async def queued(stack: EmbeddedStack, url: str) -> int:
    sqs = await stack.aws.sqs()
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names))["Attributes"]
    return sum(int(attrs[n]) for n in names)


async def wait_drained(stack: EmbeddedStack) -> None:
    """Handled messages are deleted: an empty queue means nothing is left for a retry."""
    for _ in range(200):
        if await queued(stack, stack.endpoints.control_queue_url) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a control message is still on the queue (kept for a retry)")


async def run_honest_silos(stack: EmbeddedStack, kind: str, task_name: str) -> None:
    clients = clients_for(stack, CLIENTS, EXAMPLES)
    if kind == "sync":
        await asyncio.wait_for(asyncio.gather(*(answer_rounds(c, task_name) for c in clients)), 90)
    else:
        await asyncio.wait_for(async_script(clients, task_name), 90)


def assert_ledger_is_the_reference(ledger: list[dict[str, Any]], clean: Outcome) -> None:
    [task] = [e for e in ledger if e["kind"] == "task"]
    versions = {e["version"]: e["sha256"] for e in ledger if e["kind"] == "version"}
    [final] = [e for e in ledger if e["kind"] == "final"]
    assert {0: task["initial"]["sha256"], **versions} == clean.version_sha256
    assert final["sha256"] == clean.final_sha256


@pytest.mark.parametrize("kind", ["sync", "fedasync"])
async def test_forged_control_messages_are_dropped_and_change_nothing(
    moto_server, prefix, reference, kind
):
    cfg = config(kind, f"ref-{kind}")
    name = cfg.task_name
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        with capture_logs() as logged:
            # GIVEN the scripted task, open: its genuine open message handled, no update yet
            arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
            real_token = await open_wait_token(store, kind, name)
            await wait_logged(logged, {"control.handled"}, 1)  # the genuine open, to its end
            before = await server_items(store, name)
            cases = forgeries(kind, name, real_token)
            cases["unknown-task"] = message("finalize", "no-such-task", FORGED_TOKEN, reason="idle")
            seen = len(logged)
            # WHEN a forger puts each forgery on the control queue
            for body in cases.values():
                await send(stack, body)
            outcomes = await wait_logged(logged, HANDLING, len(cases), after=seen)
        # THEN nothing moved: TASK (status, head, token), rounds, updates
        assert await server_items(store, name) == before
        # AND each forgery is logged once with its reason, none as handled or failed
        assert sorted((e["event"], e.get("reason")) for e in outcomes) == sorted(
            [("control.forged", "not_sent_by_execution")] * (len(cases) - 1)
            + [("control.dropped", "unknown_task")]
        )
        for e in outcomes:
            if e["event"] == "control.forged":
                assert e["execution"] == arn
                assert f"for task {name!r}" in e["detail"]
                assert "is not a message the task's execution sent" in e["detail"]
        # AND no token appears in what was logged (captured before any redaction)
        assert not [e for e in logged if FORGED_TOKEN in str(e) or real_token in str(e)]
        # AND each was dropped: deleted from the queue, not kept for a retry or the DLQ
        await wait_drained(stack)
        assert await queued(stack, stack.endpoints.control_dlq_url) == 0
        # WHEN the honest silos then run the task to its end
        await run_honest_silos(stack, kind, name)
        desc = await wait_execution(stack, arn)
        got = await outcome_of(store, cfg, desc)
        ledger = await export_ledger(store, name)
    # THEN it succeeds with exactly the clean run's models, byte for byte, in the ledger too
    assert_same_as(got, reference[kind])
    assert_ledger_is_the_reference(ledger, reference[kind])
