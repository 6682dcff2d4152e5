"""The server's storage edge: the silos' inbox table and the server table.

Two trust domains (DESIGN.md). The inbox table holds what silos write (`UPDATE#...`,
`HEARTBEAT#...`); the server only reads it. The server table holds everything the server
decides (TASK, ROUND#..., VERDICT#...), and no silo role may read or write it. Callers
name items by sort key and the store picks the table; an update's sort key names the
submission as the server knows it (`fedasync.core.verdicts.merge`: the inbox item with
the decision `VERDICT#{sk}`), and a write to it writes that decision, never the inbox.

Every write that decides something is conditional, so a redelivered event or a retry
after a crash finds the work done instead of doing it twice. The store holds no AWS code
of its own: each table is a `Records` port, and S3, SNS and Step Functions are the
`Objects`, `Notices` and `Executions` ports (`effects.py`). `ServerStore(aws, where)` puts
the aioboto3 implementations behind them; `ServerStore.on(ports, where)` any others (the
in-memory ones of `fedasync.aws.memory`, for the server's unit tier).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fedasync.aws.executions import (
    SPENT_TOKEN_ERRORS,
    ExecutionNotFoundError,
    Executions,
    SfnExecutions,
)
from fedasync.aws.notices import Notices, SnsNotices
from fedasync.aws.objects import Objects, S3Objects
from fedasync.aws.records import DynamoRecords, Item, Records, transaction_failure
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.verdicts import merge
from fedasync.deployment import Deployment as Where  # the one model of where a stack lives
from fedasync.resources import TABLE_SORT_KEY
from fedasync.server.effects import Effects


@dataclass(frozen=True)
class Ports:
    """What the server stores and calls through: its two tables and the three services."""

    inbox: Records
    server: Records
    objects: Objects
    notices: Notices
    executions: Executions

    @classmethod
    def on_aws(cls, aws: AwsContext, where: Where) -> Ports:
        return cls(
            inbox=DynamoRecords(aws, where.table),
            server=DynamoRecords(aws, where.server_table),
            objects=S3Objects(aws, where.bucket),
            notices=SnsNotices(aws, where.topic_arn, where.topic_shards),
            executions=SfnExecutions(aws),
        )


class ServerStore(Effects):
    """Typed operations of the server on one deployment."""

    def __init__(self, aws: AwsContext | None, where: Where, ports: Ports | None = None) -> None:
        if ports is None:
            if aws is None:
                raise ValueError("a ServerStore needs an AWS context or its ports")
            ports = Ports.on_aws(aws, where)
        self._aws = aws
        self.where = where
        self.bucket = where.bucket
        self.inbox, self.server = ports.inbox, ports.server
        self.objects, self.notices = ports.objects, ports.notices
        self.executions = ports.executions

    @classmethod
    def on(cls, ports: Ports, where: Where) -> ServerStore:
        return cls(None, where, ports)

    @property
    def aws(self) -> AwsContext:
        """The AWS context, for the few calls outside the ports (the control queue's
        visibility); a store on other ports has none."""
        if self._aws is None:
            raise RuntimeError("this store runs on ports without an AWS context")
        return self._aws

    def _records(self, sk: str) -> tuple[Records, str]:
        """(table, sort key) where the item `sk` names is stored or decided."""
        if sk.startswith(keys.UPDATE_PREFIX):
            return self.server, keys.verdict_sk(sk)
        return (self.inbox if keys.in_inbox(sk) else self.server), sk

    async def submission(self, task_name: str, sk: str) -> tuple[Item | None, Item | None]:
        """(the inbox item, the server's verdict on it) of the update `sk`, as stored."""
        inbox, verdict = await asyncio.gather(
            self.inbox.get(task_name, sk), self.server.get(task_name, keys.verdict_sk(sk))
        )
        return inbox, verdict

    async def get_item(self, task_name: str, sk: str) -> Item | None:
        if sk.startswith(keys.UPDATE_PREFIX):
            return merge(sk, *await self.submission(task_name, sk))  # type: ignore[no-any-return]
        records, key = self._records(sk)
        return await records.get(task_name, key)

    async def get_items(self, task_name: str, sks: list[str]) -> list[Item | None]:
        """Several items of one task, strongly consistent, in `sks` order (None: absent):
        the inbox's and the server table's read concurrently (`Records.get_many` batches
        each into BatchGetItems of at most 100 keys). An update costs a key in each."""
        wanted = list(dict.fromkeys(sks))
        from_inbox = [sk for sk in wanted if keys.in_inbox(sk)]
        from_server = [key for sk in wanted for records, key in [self._records(sk)]
                       if records is self.server]  # fmt: skip
        inbox, server = await asyncio.gather(
            self.inbox.get_many(task_name, from_inbox) if from_inbox else _none(),
            self.server.get_many(task_name, from_server) if from_server else _none(),
        )
        found_inbox = dict(zip(from_inbox, inbox, strict=True))
        found_server = dict(zip(from_server, server, strict=True))

        def found(sk: str) -> Item | None:
            if sk.startswith(keys.UPDATE_PREFIX):
                verdict = found_server.get(keys.verdict_sk(sk))
                return merge(sk, found_inbox.get(sk), verdict)  # type: ignore[no-any-return]
            return found_inbox.get(sk) if keys.in_inbox(sk) else found_server.get(sk)

        return [found(sk) for sk in sks]

    async def get_task(self, task_name: str) -> Item | None:
        return await self.get_item(task_name, keys.TASK_SK)

    async def query_prefix(self, task_name: str, prefix: str) -> list[Item]:
        """The items whose sort key starts with `prefix` (updates: as `get_item` gives
        them, in sort-key order, a decided update whose inbox item expired included)."""
        if not prefix.startswith(keys.UPDATE_PREFIX):
            records, key = self._records(prefix)
            return await records.query_prefix(task_name, key)
        inbox, verdicts = await asyncio.gather(
            self.inbox.query_prefix(task_name, prefix),
            self.server.query_prefix(task_name, keys.verdict_sk(prefix)),
        )
        by_sk = {str(i[TABLE_SORT_KEY]): i for i in inbox}
        decided = {keys.update_of_verdict_sk(str(v[TABLE_SORT_KEY])): v for v in verdicts}
        return [merge(sk, by_sk.get(sk), decided.get(sk)) for sk in sorted({*by_sk, *decided})]

    async def put_item(self, item: Mapping[str, Any], condition: str | None = None) -> bool:
        """Put a server item; False when the condition failed (someone did it already)."""
        sk = str(item[TABLE_SORT_KEY])
        if keys.in_inbox(sk):
            raise ValueError(f"the server never writes the silos' inbox (item {sk!r})")
        return await self.server.put(item, condition)

    def update_op(
        self,
        task_name: str,
        sk: str,
        values: Mapping[str, Any],
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
        *,
        add_to_sets: Mapping[str, Collection[str]] | None = None,
        delete_from_sets: Mapping[str, Collection[str]] | None = None,
        remove: Collection[str] = (),
    ) -> dict[str, Any]:
        """An Update operation (for `update` or a transaction) on the server table
        (`Records.update_op`); an update's sort key names its decision, `VERDICT#{sk}`."""
        if keys.in_inbox(sk) and not sk.startswith(keys.UPDATE_PREFIX):
            raise ValueError(f"the server never writes the silos' inbox (item {sk!r})")
        _, key = self._records(sk)
        return self.server.update_op(
            task_name, key, values, condition, condition_values,
            add_to_sets=add_to_sets, delete_from_sets=delete_from_sets, remove=remove,
        )  # fmt: skip

    async def update(self, op: dict[str, Any]) -> bool:
        return await self.server.update(op)

    async def transact(self, ops: list[dict[str, Any]]) -> bool:
        """All or nothing on the server table; False only when a condition failed (the
        work was done by another try); see `Records.transact`."""
        return await self.server.transact(ops)


async def _none() -> list[Item | None]:
    return []


__all__ = [
    "SPENT_TOKEN_ERRORS",
    "ExecutionNotFoundError",
    "Ports",
    "ServerStore",
    "Where",
    "transaction_failure",
]
