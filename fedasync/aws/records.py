"""DynamoDB port: the task table's items as plain dicts, with conditional writes.

Every write that decides something is conditional; a failed condition is an answer
(`WriteOutcome.applied == False`, with the item as it stands when DynamoDB returns
it), never an exception, so that redelivered events are no-ops, not crashes.

A silo uses this port too, under its role (infra/client_access.py): `put` (never asking
for values back, so a failed put returns no item) and `exists` (a GetItem projecting
only the key). `get`, `update`, `query` and `transact` are the server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from fedasync.aws.attributes import Item, deserialize_item, serialize_item, to_dynamo
from fedasync.aws.session import AwsContext, error_code
from fedasync.core import keys
from fedasync.core.errors import TaskNotFoundError
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY

_serializer = TypeSerializer()


def _key(task_name: str, sk: str) -> dict[str, Any]:
    return serialize_item({TABLE_PARTITION_KEY: task_name, TABLE_SORT_KEY: sk})


@dataclass(frozen=True)
class WriteOutcome:
    """applied: the write happened. Otherwise `item` is the current item if known, and
    `reasons` holds a transaction's per-item cancellation codes (in request order)."""

    applied: bool
    item: Item | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Put:
    task_name: str
    sk: str
    attributes: Mapping[str, Any]
    if_absent: bool = True
    # with if_absent: also write over an item whose `unless_same` attribute differs from
    # the new item's (a silo's record replaces an item under its key that it did not write)
    unless_same: str | None = None


@dataclass(frozen=True)
class Update:
    task_name: str
    sk: str
    set_values: Mapping[str, Any]
    expected: Mapping[str, Any] = field(default_factory=dict)  # attribute == value
    increment: str | None = None  # a version counter: must equal expected[name], gets +1
    must_exist: bool | None = True  # None: create the item if it is missing


@dataclass(frozen=True)
class Check:
    task_name: str
    sk: str
    expected: Mapping[str, Any] = field(default_factory=dict)
    must_exist: bool | None = True  # False: the item must be absent


Write = Put | Update | Check


class Records(Protocol):
    async def get(self, task_name: str, sk: str) -> Item | None: ...
    async def recorded_as(self, task_name: str, sk: str, attribute: str, value: str) -> bool: ...
    async def exists(self, task_name: str, sk: str) -> bool: ...
    async def get_task(self, task_name: str) -> Item: ...
    async def put(self, write: Put) -> WriteOutcome: ...
    async def update(self, write: Update) -> WriteOutcome: ...
    async def query(self, task_name: str, sk_prefix: str = "") -> list[Item]: ...
    async def transact(self, writes: Sequence[Write]) -> WriteOutcome: ...


class _Expression:
    """Builds expressions with #n/:v placeholders (status, name... are reserved words)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = _serializer.serialize(to_dynamo(value))
        return placeholder

    def condition(self, expected: Mapping[str, Any], must_exist: bool | None) -> str | None:
        """must_exist: True = the item exists, False = it does not, None = either."""
        parts = []
        if must_exist is not None:
            test = "attribute_exists" if must_exist else "attribute_not_exists"
            parts.append(f"{test}({self.name(TABLE_SORT_KEY)})")
        parts += [f"{self.name(k)} = {self.value(v)}" for k, v in expected.items()]
        return " AND ".join(parts) or None

    def params(self, condition: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if condition:
            out["ConditionExpression"] = condition
        if self.names:
            out["ExpressionAttributeNames"] = self.names
        if self.values:
            out["ExpressionAttributeValues"] = self.values
        return out


def _put_params(table: str, write: Put) -> dict[str, Any]:
    item = {**write.attributes, TABLE_PARTITION_KEY: write.task_name, TABLE_SORT_KEY: write.sk}
    params: dict[str, Any] = {"TableName": table, "Item": serialize_item(item)}
    if write.if_absent:
        params["ConditionExpression"] = f"attribute_not_exists({TABLE_SORT_KEY})"
    if write.if_absent and write.unless_same is not None:
        params["ConditionExpression"] += " OR #same <> :same"
        params["ExpressionAttributeNames"] = {"#same": write.unless_same}
        params["ExpressionAttributeValues"] = {":same": params["Item"][write.unless_same]}
    return params


def _update_params(table: str, write: Update) -> dict[str, Any]:
    expr = _Expression()
    expected = dict(write.expected)
    sets = [f"{expr.name(k)} = {expr.value(v)}" for k, v in write.set_values.items()]
    if write.increment is not None:
        counter = expr.name(write.increment)
        sets.append(f"{counter} = {counter} + {expr.value(1)}")
        expected.setdefault(write.increment, 0)
    params = {
        "TableName": table,
        "Key": _key(write.task_name, write.sk),
        "UpdateExpression": "SET " + ", ".join(sets),
    }
    return params | expr.params(expr.condition(expected, write.must_exist))


def _check_params(table: str, write: Check) -> dict[str, Any]:
    expr = _Expression()
    condition = expr.condition(write.expected, write.must_exist)
    if condition is None:
        raise ValueError(f"Check of {write.sk!r} in task {write.task_name!r} checks nothing")
    return {"TableName": table, "Key": _key(write.task_name, write.sk)} | expr.params(condition)


class DynamoRecords:
    """`Records` over aioboto3's DynamoDB client, on the single task table."""

    def __init__(self, aws: AwsContext, table: str) -> None:
        self._aws = aws
        self._table = table

    async def get(self, task_name: str, sk: str) -> Item | None:
        ddb = await self._aws.dynamodb()
        got = await ddb.get_item(
            TableName=self._table, Key=_key(task_name, sk), ConsistentRead=True
        )
        return deserialize_item(got["Item"]) if "Item" in got else None

    async def recorded_as(self, task_name: str, sk: str, attribute: str, value: str) -> bool:
        """Whether the item exists with `attribute` equal to `value`, projecting only the
        key and that attribute (which a silo's role must be allowed to read)."""
        found = await self._probe(task_name, sk, attribute)
        return found is not None and found.get(attribute) == value

    async def exists(self, task_name: str, sk: str) -> bool:
        """Whether the item exists, learning nothing of what it holds: the projection names
        only the key, which is all a silo's role may read (`dynamodb:Attributes`)."""
        return await self._probe(task_name, sk) is not None

    async def _probe(self, task_name: str, sk: str, *attributes: str) -> Item | None:
        ddb = await self._aws.dynamodb()
        names = {"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY}
        names |= {f"#a{i}": a for i, a in enumerate(attributes)}
        got = await ddb.get_item(
            TableName=self._table,
            Key=_key(task_name, sk),
            ConsistentRead=True,
            ProjectionExpression=", ".join(names),
            ExpressionAttributeNames=names,
        )
        return deserialize_item(got["Item"]) if "Item" in got else None

    async def get_task(self, task_name: str) -> Item:
        item = await self.get(task_name, keys.TASK_SK)
        if item is None:
            raise TaskNotFoundError(
                f"task {task_name!r} has no TASK item in table {self._table!r}; "
                "start it with `fedasync task start` first"
            )
        return item

    async def put(self, write: Put) -> WriteOutcome:
        """Put; a failed condition gives `applied=False` and no item. Nothing is asked
        back (no ReturnValues, no ReturnValuesOnConditionCheckFailure): a silo's role may
        write records but never read one, so whoever needs the item reads it itself."""
        ddb = await self._aws.dynamodb()
        params = _put_params(self._table, write)
        return await self._conditional(ddb.put_item(**params), params["Item"])

    async def update(self, write: Update) -> WriteOutcome:
        ddb = await self._aws.dynamodb()
        params = _update_params(self._table, write)
        return await self._conditional(
            ddb.update_item(
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD", **params
            )
        )

    async def _conditional(
        self,
        call: Any,
        written: Mapping[str, Any] | None = None,
    ) -> WriteOutcome:
        try:
            response = await call
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            current: Any = error.response.get("Item")
            return WriteOutcome(applied=False, item=deserialize_item(current) if current else None)
        item = response.get("Attributes") or written
        return WriteOutcome(applied=True, item=deserialize_item(item) if item else None)

    async def query(self, task_name: str, sk_prefix: str = "") -> list[Item]:
        """Every item of the task whose sort key starts with `sk_prefix`, in key order."""
        ddb = await self._aws.dynamodb()
        expr = _Expression()
        condition = f"{expr.name(TABLE_PARTITION_KEY)} = {expr.value(task_name)}"
        if sk_prefix:
            condition += f" AND begins_with({expr.name(TABLE_SORT_KEY)}, {expr.value(sk_prefix)})"
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": condition,
            "ConsistentRead": True,
        } | expr.params(None)
        items: list[Item] = []
        while True:
            page = await ddb.query(**params)
            items += [deserialize_item(i) for i in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return items
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def transact(self, writes: Sequence[Write]) -> WriteOutcome:
        """All or nothing (up to 100 writes); a failed condition names which write failed."""
        ddb = await self._aws.dynamodb()
        try:
            await ddb.transact_write_items(TransactItems=[self._transact_item(w) for w in writes])
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            reasons = error.response.get("CancellationReasons", [])
            codes = tuple(str(r.get("Code", "None")) for r in reasons)
            if "ConditionalCheckFailed" not in codes:
                raise  # a conflict or throttle: retrying is the caller's call
            return WriteOutcome(applied=False, reasons=codes)
        return WriteOutcome(applied=True)

    def _transact_item(self, write: Write) -> Any:
        if isinstance(write, Put):
            return {"Put": _put_params(self._table, write)}
        if isinstance(write, Update):
            return {"Update": _update_params(self._table, write)}
        return {"ConditionCheck": _check_params(self._table, write)}


__all__ = [
    "Check",
    "DynamoRecords",
    "Item",
    "Put",
    "Records",
    "Update",
    "Write",
    "WriteOutcome",
    "deserialize_item",
    "serialize_item",
]
