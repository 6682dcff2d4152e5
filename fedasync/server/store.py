"""The server's storage edge on DynamoDB: the silos' inbox table and the server table.

Two trust domains (DESIGN.md). The inbox table holds what silos write (`UPDATE#...`,
`HEARTBEAT#...`); the server only reads it. The server table holds everything the server
decides (TASK, ROUND#..., VERDICT#...), and no silo role may read or write it. Callers
name items by sort key and the store picks the table; an update's sort key names the
submission as the server knows it (`fedasync.core.verdicts.merge`: the inbox item with
the decision `VERDICT#{sk}`), and a write to it writes that decision, never the inbox.

Every write that decides something is conditional, so a redelivered event or a retry
after a crash finds the work done instead of doing it twice. S3, SNS and Step Functions
calls are in `effects.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

from botocore.exceptions import ClientError

from fedasync.aws.batching import BATCH_GET_MAX_KEYS, drain_unprocessed
from fedasync.aws.executions import SPENT_TOKEN_ERRORS, ExecutionNotFoundError
from fedasync.aws.records import (
    TRANSACT_TRIES,
    Item,
    condition_names,
    deserialize_item,
    serialize_item,
    transaction_failure,
)
from fedasync.aws.session import AwsContext, error_code
from fedasync.core import keys
from fedasync.core.verdicts import merge
from fedasync.deployment import Deployment as Where  # the one model of where a stack lives
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY
from fedasync.server.effects import Effects


class ServerStore(Effects):
    """Typed operations of the server on one deployment."""

    def __init__(self, aws: AwsContext, where: Where) -> None:
        self.aws = aws
        self.where = where
        self.bucket = where.bucket
        self.topic_arn = where.topic_arn
        self.topic_shards = where.topic_shards

    def _key(self, task_name: str, sk: str) -> dict[str, Any]:
        return {TABLE_PARTITION_KEY: {"S": task_name}, TABLE_SORT_KEY: {"S": sk}}

    def _place(self, sk: str) -> tuple[str, str]:
        """(table, sort key) where the item `sk` names is stored or decided."""
        if sk.startswith(keys.UPDATE_PREFIX):
            return self.where.server_table, keys.verdict_sk(sk)
        return (self.where.table if keys.in_inbox(sk) else self.where.server_table), sk

    async def _get_raw(self, table: str, task_name: str, sk: str) -> Item | None:
        ddb = await self.aws.dynamodb()
        resp = await ddb.get_item(
            TableName=table, Key=self._key(task_name, sk), ConsistentRead=True
        )
        item = resp.get("Item")
        return deserialize_item(item) if item else None

    async def submission(self, task_name: str, sk: str) -> tuple[Item | None, Item | None]:
        """(the inbox item, the server's verdict on it) of the update `sk`, as stored."""
        inbox, verdict = await asyncio.gather(
            self._get_raw(self.where.table, task_name, sk),
            self._get_raw(self.where.server_table, task_name, keys.verdict_sk(sk)),
        )
        return inbox, verdict

    async def get_item(self, task_name: str, sk: str) -> Item | None:
        if sk.startswith(keys.UPDATE_PREFIX):
            return merge(sk, *await self.submission(task_name, sk))  # type: ignore[no-any-return]
        table, key = self._place(sk)
        return await self._get_raw(table, task_name, key)

    async def get_items(self, task_name: str, sks: list[str]) -> list[Item | None]:
        """Several items of one task, strongly consistent, in `sks` order (None: absent).

        BatchGetItem takes at most 100 keys (across tables): the keys go in batches of 100,
        and the keys a batch leaves unprocessed (throttling, the 16 MB response limit) are
        asked again with backoff (`drain_unprocessed`). An update costs two keys."""
        ddb = await self.aws.dynamodb()
        wanted: list[tuple[str, str]] = []
        for sk in dict.fromkeys(sks):
            if sk.startswith(keys.UPDATE_PREFIX):
                wanted.append((self.where.table, sk))
            wanted.append(self._place(sk))
        found: dict[tuple[str, str], Item] = {}

        async def batch_get(request: dict[str, Any]) -> dict[str, Any]:
            resp = await ddb.batch_get_item(RequestItems=request)
            for table, raws in resp.get("Responses", {}).items():
                for raw in raws:
                    item = deserialize_item(raw)
                    found[(table, str(item[TABLE_SORT_KEY]))] = item
            return dict(resp.get("UnprocessedKeys") or {})

        for start in range(0, len(wanted), BATCH_GET_MAX_KEYS):
            request: dict[str, Any] = {}
            for table, sk in wanted[start : start + BATCH_GET_MAX_KEYS]:
                entry = request.setdefault(table, {"Keys": [], "ConsistentRead": True})
                entry["Keys"].append(self._key(task_name, sk))
            await drain_unprocessed(batch_get, request, what=f"items of task {task_name!r}")
        return [self._found(found, sk) for sk in sks]

    def _found(self, found: dict[tuple[str, str], Item], sk: str) -> Item | None:
        if sk.startswith(keys.UPDATE_PREFIX):
            verdict = found.get(self._place(sk))
            return merge(sk, found.get((self.where.table, sk)), verdict)  # type: ignore[no-any-return]
        return found.get(self._place(sk))

    async def get_task(self, task_name: str) -> Item | None:
        return await self.get_item(task_name, keys.TASK_SK)

    async def _query(self, table: str, task_name: str, prefix: str) -> list[Item]:
        ddb = await self.aws.dynamodb()
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "#pk = :pk AND begins_with(#sk, :prefix)",
            "ExpressionAttributeNames": {"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY},
            "ExpressionAttributeValues": {":pk": {"S": task_name}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
        }
        while True:
            resp = await ddb.query(**kwargs)
            items += [deserialize_item(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def query_prefix(self, task_name: str, prefix: str) -> list[Item]:
        """The items whose sort key starts with `prefix` (updates: as `get_item` gives
        them, in sort-key order, a decided update whose inbox item expired included)."""
        if not prefix.startswith(keys.UPDATE_PREFIX):
            table, key = self._place(prefix)
            return await self._query(table, task_name, key)
        inbox, verdicts = await asyncio.gather(
            self._query(self.where.table, task_name, prefix),
            self._query(self.where.server_table, task_name, keys.verdict_sk(prefix)),
        )
        by_sk = {str(i[TABLE_SORT_KEY]): i for i in inbox}
        decided = {keys.update_of_verdict_sk(str(v[TABLE_SORT_KEY])): v for v in verdicts}
        return [merge(sk, by_sk.get(sk), decided.get(sk)) for sk in sorted({*by_sk, *decided})]

    async def put_item(self, item: Mapping[str, Any], condition: str | None = None) -> bool:
        """Put a server item; False when the condition failed (someone did it already)."""
        sk = str(item[TABLE_SORT_KEY])
        if keys.in_inbox(sk):
            raise ValueError(f"the server never writes the silos' inbox (item {sk!r})")
        ddb = await self.aws.dynamodb()
        kwargs: dict[str, Any] = {
            "TableName": self.where.server_table,
            "Item": serialize_item(item),
        }
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ExpressionAttributeNames"] = condition_names(condition)
        try:
            await ddb.put_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

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
    ) -> dict[str, Any]:
        """An Update operation (for `update` or a transaction) setting `values`, and adding
        strings to (or deleting them from) string-set attributes; empty collections are
        left out (DynamoDB has no empty set)."""
        names = {f"#a{i}": k for i, k in enumerate(values)}
        exprs: dict[str, Any] = {f":v{i}": v for i, v in enumerate(values.values())}
        clauses = []
        if values:
            clauses.append("SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))))
        for verb, sets in (("ADD", add_to_sets), ("DELETE", delete_from_sets)):
            members = [(k, set(v)) for k, v in (sets or {}).items() if v]
            for j, (name, strings) in enumerate(members):
                names[f"#{verb.lower()}{j}"] = name
                exprs[f":{verb.lower()}{j}"] = strings
            if members:
                clauses.append(
                    f"{verb} "
                    + ", ".join(
                        f"#{verb.lower()}{j} :{verb.lower()}{j}" for j in range(len(members))
                    )
                )
        if not clauses:
            raise ValueError(f"update of {sk!r} in task {task_name!r} changes nothing")
        exprs.update(condition_values or {})
        condition = condition or "attribute_exists(#pk)"
        names.update(condition_names(condition))
        if keys.in_inbox(sk) and not sk.startswith(keys.UPDATE_PREFIX):
            raise ValueError(f"the server never writes the silos' inbox (item {sk!r})")
        table, key = self._place(sk)  # an update's decision: its VERDICT item
        return {
            "TableName": table,
            "Key": self._key(task_name, key),
            "UpdateExpression": " ".join(clauses),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize_item(exprs),
        }

    async def update(self, op: dict[str, Any]) -> bool:
        ddb = await self.aws.dynamodb()
        try:
            await ddb.update_item(**op)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def transact(self, ops: list[dict[str, Any]]) -> bool:
        """All or nothing; False only when a condition failed (the work was done by another
        try). A transaction cancelled for any other reason (a conflict with a concurrent
        write, throttling) did nothing: it is tried again, a few times, then raised."""
        ddb = await self.aws.dynamodb()
        for attempt in range(TRANSACT_TRIES):
            try:
                await ddb.transact_write_items(TransactItems=[{"Update": op} for op in ops])  # type: ignore[typeddict-item]
            except ClientError as exc:
                reasons = [str(r.get("Code")) for r in exc.response.get("CancellationReasons", [])]
                verdict = transaction_failure(error_code(exc), reasons)
                if verdict == "done":
                    return False
                if verdict == "raise" or attempt == TRANSACT_TRIES - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
            else:
                return True
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = [
    "SPENT_TOKEN_ERRORS",
    "ExecutionNotFoundError",
    "ServerStore",
    "Where",
    "transaction_failure",
]
