"""DynamoDB port: one table's items as plain dicts, with conditional writes.

Every write that decides something is conditional; a failed condition is an answer
(`False`: another try did the work), never an exception, so that redelivered events are
no-ops, not crashes. One implementation serves every table (the inbox silos write, the
server's own) and every caller: a silo uses it under its role (infra/client_access.py)
for `put` (never asking for values back: its role may not read a record) and `exists`
(a GetItem projecting only the key); the rest is the server's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from botocore.exceptions import ClientError

from fedasync.aws.attributes import Item, deserialize_item, serialize_item
from fedasync.aws.batching import BATCH_GET_MAX_KEYS, drain_unprocessed
from fedasync.aws.session import AwsContext, error_code
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY

__all__ = ["DynamoRecords", "Item", "Records", "deserialize_item", "item_key", "serialize_item"]


def item_key(task_name: str, sk: str) -> dict[str, Any]:
    """An item's primary key as DynamoDB takes it."""
    return {TABLE_PARTITION_KEY: {"S": task_name}, TABLE_SORT_KEY: {"S": sk}}


# --- conditions and transactions --------------------------------------------------------

TRANSACT_TRIES = 5
# Why DynamoDB may cancel a transaction that did nothing and may succeed if tried again
# (TransactionCanceledException's CancellationReasons codes, and the plain error codes).
RETRIED_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded",
     "RequestLimitExceeded"}
)  # fmt: skip
RETRIED_ERRORS = frozenset(
    {"TransactionConflictException", "TransactionInProgressException", "ThrottlingException",
     "ProvisionedThroughputExceededException", "RequestLimitExceeded", "InternalServerError"}
)  # fmt: skip


def transaction_failure(code: str, reasons: Sequence[str]) -> str:
    """What a failed TransactWriteItems means: 'done' (a condition failed: another try did
    the work), 'retry' (cancelled by contention or throttling: nothing was written), or
    'raise' (anything else: a bug or a bad request, which trying again cannot fix)."""
    if code == "ConditionalCheckFailedException":
        return "done"
    if code == "TransactionCanceledException":
        if "ConditionalCheckFailed" in reasons:
            return "done"
        failed = {r for r in reasons if r not in ("None", "")}
        return "retry" if failed and failed <= RETRIED_CANCELLATIONS else "raise"
    return "retry" if code in RETRIED_ERRORS else "raise"


def condition_names(condition: str) -> dict[str, str]:
    """Conditions name attributes as `#attr` (DynamoDB reserves many plain words); `#pk`
    and `#sk` are the table's keys."""
    special = {"pk": TABLE_PARTITION_KEY, "sk": TABLE_SORT_KEY}
    return {f"#{w}": special.get(w, w) for w in re.findall(r"#([A-Za-z_][A-Za-z0-9_]*)", condition)}


def _set_clauses(
    verb: str, sets: Mapping[str, Collection[str]] | None, names: dict[str, str],
    values: dict[str, Any],
) -> list[str]:  # fmt: skip
    members = [(k, set(v)) for k, v in (sets or {}).items() if v]
    tag = verb.lower()
    for j, (name, strings) in enumerate(members):
        names[f"#{tag}{j}"] = name
        values[f":{tag}{j}"] = strings
    if not members:
        return []
    return [f"{verb} " + ", ".join(f"#{tag}{j} :{tag}{j}" for j in range(len(members)))]


class Records(Protocol):
    """One table's items, keyed by (task_name, sk)."""

    table: str

    async def get(self, task_name: str, sk: str) -> Item | None: ...
    async def get_many(self, task_name: str, sks: list[str]) -> list[Item | None]: ...
    async def exists(self, task_name: str, sk: str) -> bool: ...
    async def recorded_as(self, task_name: str, sk: str, attribute: str, value: str) -> bool: ...
    async def query_prefix(self, task_name: str, prefix: str) -> list[Item]: ...
    async def put(
        self,
        item: Mapping[str, Any],
        condition: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> bool: ...
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
    ) -> dict[str, Any]: ...
    async def update(self, op: dict[str, Any]) -> bool: ...
    async def transact(self, ops: list[dict[str, Any]]) -> bool: ...


class DynamoRecords:
    """`Records` over aioboto3's DynamoDB client, on one table."""

    def __init__(self, aws: AwsContext, table: str) -> None:
        self._aws = aws
        self.table = table

    async def get(self, task_name: str, sk: str) -> Item | None:
        ddb = await self._aws.dynamodb()
        got = await ddb.get_item(
            TableName=self.table, Key=item_key(task_name, sk), ConsistentRead=True
        )
        item = got.get("Item")
        return deserialize_item(item) if item else None

    async def get_many(self, task_name: str, sks: list[str]) -> list[Item | None]:
        """Several items of one task, strongly consistent, in `sks` order (None: absent).

        BatchGetItem takes at most 100 keys: the keys go in batches of 100, and the keys a
        batch leaves unprocessed (throttling, the 16 MB response limit) are asked again
        with backoff (`drain_unprocessed`)."""
        ddb = await self._aws.dynamodb()
        unique = list(dict.fromkeys(sks))
        found: dict[str, Item] = {}

        async def batch_get(request: dict[str, Any]) -> dict[str, Any]:
            resp = await ddb.batch_get_item(RequestItems=request)
            for raw in resp.get("Responses", {}).get(self.table, []):
                item = deserialize_item(raw)
                found[str(item[TABLE_SORT_KEY])] = item
            return dict(resp.get("UnprocessedKeys") or {})

        for start in range(0, len(unique), BATCH_GET_MAX_KEYS):
            chunk = unique[start : start + BATCH_GET_MAX_KEYS]
            request = {
                self.table: {
                    "Keys": [item_key(task_name, sk) for sk in chunk],
                    "ConsistentRead": True,
                }
            }
            await drain_unprocessed(batch_get, request, what=f"items of task {task_name!r}")
        return [found.get(sk) for sk in sks]

    async def exists(self, task_name: str, sk: str) -> bool:
        """Whether the item exists, learning nothing of what it holds: the projection names
        only the key, which is all a silo's role may read (`dynamodb:Attributes`)."""
        ddb = await self._aws.dynamodb()
        got = await ddb.get_item(
            TableName=self.table,
            Key=item_key(task_name, sk),
            ConsistentRead=True,
            ProjectionExpression="#pk, #sk",
            ExpressionAttributeNames={"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY},
        )
        return "Item" in got

    async def recorded_as(self, task_name: str, sk: str, attribute: str, value: str) -> bool:
        """Whether the item under `sk` exists with `attribute` equal to `value`, learning no
        other attribute (the projection names the key and `attribute` only: a silo's role
        may project its object key, never a record's content)."""
        ddb = await self._aws.dynamodb()
        got = await ddb.get_item(
            TableName=self.table,
            Key=item_key(task_name, sk),
            ConsistentRead=True,
            ProjectionExpression="#pk, #sk, #a",
            ExpressionAttributeNames={
                "#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY, "#a": attribute
            },
        )  # fmt: skip
        item = got.get("Item")
        return item is not None and deserialize_item(item).get(attribute) == value

    async def query_prefix(self, task_name: str, prefix: str) -> list[Item]:
        """Every item of the task whose sort key starts with `prefix`, in key order."""
        ddb = await self._aws.dynamodb()
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
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

    async def put(
        self,
        item: Mapping[str, Any],
        condition: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> bool:
        """Put; False when the condition failed (someone did it already). Nothing is asked
        back (no ReturnValues): a silo's role may write records but never read one."""
        ddb = await self._aws.dynamodb()
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": serialize_item(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
            if names := condition_names(condition):
                kwargs["ExpressionAttributeNames"] = names
            if values:
                kwargs["ExpressionAttributeValues"] = serialize_item(values)
        return await self._conditional(ddb.put_item(**kwargs))

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
        """An Update operation (for `update` or a transaction) setting `values`, adding
        strings to (or deleting them from) string-set attributes, and removing the
        attributes `remove` names; empty collections are left out (DynamoDB has no empty
        set). Default condition: the item exists."""
        names = {f"#a{i}": k for i, k in enumerate(values)}
        exprs: dict[str, Any] = {f":v{i}": v for i, v in enumerate(values.values())}
        clauses = []
        if values:
            clauses.append("SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))))
        clauses += _set_clauses("ADD", add_to_sets, names, exprs)
        clauses += _set_clauses("DELETE", delete_from_sets, names, exprs)
        if remove:
            names.update({f"#r{i}": name for i, name in enumerate(remove)})
            clauses.append("REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove))))
        if not clauses:
            raise ValueError(f"update of {sk!r} in task {task_name!r} changes nothing")
        exprs.update(condition_values or {})
        condition = condition or "attribute_exists(#pk)"
        names.update(condition_names(condition))
        return {
            "TableName": self.table,
            "Key": item_key(task_name, sk),
            "UpdateExpression": " ".join(clauses),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize_item(exprs),
        }

    async def update(self, op: dict[str, Any]) -> bool:
        ddb = await self._aws.dynamodb()
        return await self._conditional(ddb.update_item(**op))

    async def transact(self, ops: list[dict[str, Any]]) -> bool:
        """All or nothing; False only when a condition failed (the work was done by another
        try). A transaction cancelled for any other reason (a conflict with a concurrent
        write, throttling) did nothing: it is tried again, a few times, then raised."""
        ddb = await self._aws.dynamodb()
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

    @staticmethod
    async def _conditional(call: Any) -> bool:
        try:
            await call
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True
