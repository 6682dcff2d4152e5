"""Deterministic scripted tasks for the fault suite, so a faulty run can be compared byte
for byte with a clean one.

Sync: every client answers every round (FedAvg sorts its members, so arrival order does
not matter). Async: one driver writes every update record in a fixed order from base
version 0 (the stream keeps a partition's order), so the absorbed order is fixed too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment
from fedasync.local.pumps import Handler, PumpOptions
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import AGGREGATE_HANDLER, TABLE_PARTITION_KEY, TABLE_SORT_KEY, ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.integration.scripted import ScriptedClient
from tests.integration.test_server_sync import (
    clients_for,
    initial_model,
    store_for,
    wait_execution,
)

CLIENTS = ("a", "b", "c")
KINDS = ("sync", "fedasync", "fedbuff")
EXAMPLES = (10, 30, 60)
ASYNC_UPDATES = (("a", 0), ("b", 1), ("c", 2), ("a", 3), ("b", 4), ("c", 5))


def config(kind: str, name: str) -> TaskConfig:
    base: dict[str, Any] = {"task_name": name, "clients": list(CLIENTS)}
    if kind == "sync":
        # one check per round (at its deadline): no check_round, with its fresh token on
        # the ROUND item, lands in the middle of a test that compares items or counts
        # the control messages handled
        return TaskConfig.parse(
            {**base, "mode": "sync", "rounds": 2, "round_timeout_s": 60, "round_check_s": 60}
        )
    strategy = {"fedasync": {}, "fedbuff": {"strategy": "fedbuff", "buffer_size": 2}}[kind]
    versions = len(ASYNC_UPDATES) // (2 if kind == "fedbuff" else 1)
    return TaskConfig.parse(
        {
            **base,
            "mode": "async",
            "alpha": 0.5,
            "staleness": "polynomial(0.5)",
            "max_staleness": 10,
            "max_versions": versions,
            **strategy,
        }
    )


@dataclass(frozen=True)
class Outcome:
    status: str
    cause: str | None
    final_sha256: str | None
    version_sha256: dict[int, str]
    accepted: int
    rejected: int
    absorbed: int
    head_version: int


async def all_decided(
    store: ServerStore, task_name: str, *, count: int | None = None, timeout_s: float = 30
) -> list[dict[str, Any]]:
    """The task's update items once each has its verdict (and, given `count`, once that
    many exist): updates still in flight when a run ends are waited for, never skipped."""
    deadline = time.monotonic() + timeout_s
    while True:
        # counted first, read once they are all decided: reading every item five times a
        # second would keep the (one-request-at-a-time) local DynamoDB busy serializing
        # them, slowing the very handler being waited for as the items pile up
        total, undecided = await _update_counts(store, task_name)
        if (count is None or total == count) and undecided == 0:
            items = await store.query_prefix(task_name, keys.UPDATE_PREFIX)
            if (count is None or len(items) == count) and all(i.get("verdict") for i in items):
                return items
        assert time.monotonic() < deadline, "updates left without a verdict"
        await asyncio.sleep(0.2)


async def _update_counts(store: ServerStore, task_name: str) -> tuple[int, int]:
    """(update items, those without a verdict) of a task, counted, not read: the inbox's
    update items, less the server table's verdicts on them."""
    total = await _count(store, store.where.table, task_name, keys.UPDATE_PREFIX)
    decided = await _count(
        store, store.where.server_table, task_name, keys.verdict_sk(keys.UPDATE_PREFIX), "verdict"
    )
    return total, total - decided


async def _count(
    store: ServerStore, table: str, task_name: str, prefix: str, having: str | None = None
) -> int:
    ddb = await store.aws.dynamodb()
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :pk AND begins_with(#sk, :prefix)",
        "ExpressionAttributeNames": {"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY},
        "ExpressionAttributeValues": {":pk": {"S": task_name}, ":prefix": {"S": prefix}},
        "Select": "COUNT",
        "ConsistentRead": True,
    }
    if having is not None:
        kwargs["FilterExpression"] = "attribute_exists(#having)"
        kwargs["ExpressionAttributeNames"]["#having"] = having
    count = 0
    while True:
        page = await ddb.query(**kwargs)
        count += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def assert_same_as(got: Outcome, clean: Outcome) -> None:
    """A run under faults ends like the clean one: SUCCEEDED, the same versions byte for
    byte, and every update decided exactly once."""
    assert got.status == clean.status == "SUCCEEDED", got.cause
    assert got.version_sha256 == clean.version_sha256
    assert got.final_sha256 == clean.final_sha256
    assert (got.accepted, got.rejected, got.absorbed) == (
        clean.accepted,
        clean.rejected,
        clean.absorbed,
    )


async def outcome_of(store: ServerStore, cfg: TaskConfig, desc: dict[str, Any]) -> Outcome:
    name = cfg.task_name
    task = await store.get_task(name) or {}
    updates = await store.query_prefix(name, keys.UPDATE_PREFIX)
    head = int(task.get("head_version", 0))
    versions = {
        v: codec.sha256_bytes(await store.get_object(keys.global_key(name, v)))
        for v in range(head + 1)
    }
    return Outcome(
        status=str(desc["status"]),
        cause=desc.get("cause"),
        final_sha256=task.get("final_sha256"),
        version_sha256=versions,
        accepted=sum(1 for u in updates if u.get("verdict") == "accepted"),
        rejected=sum(1 for u in updates if u.get("verdict") == "rejected"),
        absorbed=int(task.get("absorbed", 0)),
        head_version=head,
    )


async def drive(stack: EmbeddedStack, cfg: TaskConfig, timeout_s: float = 90) -> Outcome:
    """Run the scripted task on a running stack; return what the server ended with."""
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    clients = clients_for(stack, CLIENTS, EXAMPLES)
    if cfg.mode == "sync":
        answering = (answer_rounds(c, cfg.task_name) for c in clients)
        await asyncio.wait_for(asyncio.gather(*answering), timeout_s)
    else:
        await async_script(clients, cfg.task_name)
    desc = await wait_execution(stack, arn, timeout_s)
    return await outcome_of(store, cfg, desc)


async def next_notice(client: ScriptedClient, task_name: str) -> GlobalModelNotice:
    """The client's next notice for this task (a shared stack's queues hold others too)."""
    while True:
        notice = await client.poll()
        if notice is not None and notice.task_name == task_name:
            return notice


async def answer_rounds(client: ScriptedClient, task_name: str) -> None:
    """Answer every round notice of the task until its final notice."""
    while not (notice := await next_notice(client, task_name)).final:
        await client.submit(notice)


async def async_script(clients: list[ScriptedClient], task_name: str) -> None:
    by_id = {c.client_id: c for c in clients}
    notices = {c.client_id: await next_notice(c, task_name) for c in clients}
    for client_id, k in ASYNC_UPDATES:
        client = by_id[client_id]
        weights = {name: w + 0.1 * (k + 1) for name, w in initial_model().items()}
        await client.submit(notices[client_id], weights, update_id=f"{client_id}-v{k:08d}")


def stack_for(
    moto_server: Any,
    prefix: str,
    *,
    handler: Handler | str = AGGREGATE_HANDLER,
    clients: tuple[str, ...] = CLIENTS,
    **options: Any,
) -> EmbeddedStack:
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in clients))
    return EmbeddedStack(
        spec,
        endpoint_url=moto_server.endpoint_url,
        aggregate_handler=handler,
        pump_options=PumpOptions(**options),
    )


class Flaky:
    """Wraps the real aggregate handler: fails chosen deliveries the way Lambda can fail.

    `whole`: the first delivery of each distinct batch raises (Lambda retries, bisects).
    `partial`: the first delivery of each batch reports its last record as failed.
    """

    def __init__(self, mode: str, real: Callable[..., Any] | None = None) -> None:
        from fedasync.local.stack import load_handler

        self.mode = mode
        self.real = real or load_handler(AGGREGATE_HANDLER)
        self.seen: set[tuple[str, ...]] = set()
        self.injected = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        ids = tuple(r["dynamodb"]["SequenceNumber"] for r in event["Records"])
        first = ids not in self.seen
        self.seen.add(ids)
        if first and self.mode == "whole":
            self.injected += 1
            raise RuntimeError("injected: the function crashed before doing anything")
        if first and self.mode == "partial":
            # the last record "fails" before it is handled; the rest are handled for real
            self.injected += 1
            head = event["Records"][:-1]
            result = self.real({"Records": head}, context) if head else {}
            failures = list((result or {}).get("batchItemFailures") or [])
            return {"batchItemFailures": [*failures, {"itemIdentifier": ids[-1]}]}
        return self.real(event, context)
