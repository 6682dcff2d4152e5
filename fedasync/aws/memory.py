"""In-memory implementations of the ports, for the server's unit tier.

Each class implements one Protocol of `fedasync.aws` (`Records`, `Objects`, `Notices`,
`Executions`) in the process, with no AWS and no moto, so the server's decisions can be
tested in milliseconds. They are held to the same contract as the AWS implementations:
`tests/integration/test_ports_*.py` run every contract test against both, the aioboto3
one on a moto server. They are our own ports' implementations, never fakes of boto.

Where DynamoDB's behaviour is part of the contract it is kept: items round-trip through
the DynamoDB attribute encoding (`serialize_item`), so a float comes back as DynamoDB
would give it; a failed condition is `False`; a transaction checks every condition
before it writes anything; a comparison with a missing attribute is false. The condition
language is the subset the code uses (`evaluate`): `attribute_exists(#a)`,
`attribute_not_exists(#a)`, `#a = :v`, `#a <> :v`, `#a IN (:x, :y)`, joined by AND and
OR (AND binds tighter), names with or without their `#` placeholder. Anything else is a
`ValueError`, so a new condition cannot pass here unread.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedasync.aws.attributes import Item, deserialize_item, serialize_item
from fedasync.aws.executions import Execution, ExecutionNotFoundError, execution_arn_for
from fedasync.aws.transfer import MISSING, Advance, CorruptDownloadError
from fedasync.core.errors import MissingObjectError, PayloadTooLargeError, RegistryError
from fedasync.core.messages import GlobalModelNotice
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY, topic_shard

Key = tuple[str, str, str]  # (table, task_name, sk)

_CLAUSE = re.compile(
    r"^(?:(?P<fn>attribute_exists|attribute_not_exists)\(\s*(?P<fname>#?\w+)\s*\)"
    r"|(?P<name>#?\w+)\s*(?:(?P<op>=|<>)\s*(?P<value>:\w+)"
    r"|IN\s*\((?P<members>\s*:\w+(?:\s*,\s*:\w+)*\s*)\)))$"
)


def _attribute(token: str, names: Mapping[str, str]) -> str:
    special = {"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY}
    if token.startswith("#"):
        return names.get(token) or special.get(token) or token[1:]
    return token


def _clause(text: str, item: Item | None, names: Mapping[str, str], values: Item) -> bool:
    match = _CLAUSE.match(text.strip())
    if match is None:
        raise ValueError(f"condition clause {text!r} is outside the supported subset")
    present = item or {}
    if match["fn"]:
        there = _attribute(match["fname"], names) in present
        return there if match["fn"] == "attribute_exists" else not there
    attribute = _attribute(match["name"], names)
    if attribute not in present:
        return False  # DynamoDB: a comparison with a missing attribute is false
    if match["members"] is not None:
        return any(present[attribute] == values[m.strip()] for m in match["members"].split(","))
    equal = bool(present[attribute] == values[match["value"]])
    return equal if match["op"] == "=" else not equal


def evaluate(
    condition: str | None, item: Item | None, names: Mapping[str, str], values: Item
) -> bool:
    """Whether `condition` holds for `item` (None: absent), in the supported subset."""
    if not condition:
        return True
    return any(
        all(_clause(c, item, names, values) for c in re.split(r"\s+AND\s+", alternative))
        for alternative in re.split(r"\s+OR\s+", condition)
    )


def _stored(item: Mapping[str, Any]) -> Item:
    """The item as DynamoDB would hand it back."""
    return deserialize_item(serialize_item(item))


@dataclass
class MemoryTables:
    """Every table's items, shared by the `MemoryRecords` of one stack, and each write of
    an item as a DynamoDB stream record (`stream`): what the aggregate function reads."""

    items: dict[Key, Item] = field(default_factory=dict)
    stream: list[dict[str, Any]] = field(default_factory=list)
    _sequence: int = 0

    def write(self, key: Key, item: Item) -> None:
        event = "MODIFY" if key in self.items else "INSERT"
        self.items[key] = item
        self._sequence += 1
        self.stream.append(
            {
                "eventID": str(self._sequence),
                "eventName": event,
                "eventSource": "aws:dynamodb",
                "tableName": key[0],
                "dynamodb": {
                    "Keys": serialize_item({TABLE_PARTITION_KEY: key[1], TABLE_SORT_KEY: key[2]}),
                    "NewImage": serialize_item(item),
                    "SequenceNumber": f"{self._sequence:021d}",
                },
            }
        )

    def take_stream(self, table: str) -> list[dict[str, Any]]:
        """The stream records of `table` not taken yet, oldest first."""
        taken = [r for r in self.stream if r["tableName"] == table]
        self.stream = [r for r in self.stream if r["tableName"] != table]
        return taken


class MemoryRecords:
    """`Records` in memory, on one table of a `MemoryTables`."""

    def __init__(self, tables: MemoryTables, table: str) -> None:
        self.tables = tables
        self.table = table

    def _key(self, task_name: str, sk: str) -> Key:
        return (self.table, task_name, sk)

    async def get(self, task_name: str, sk: str) -> Item | None:
        found = self.tables.items.get(self._key(task_name, sk))
        return _stored(found) if found is not None else None

    async def get_many(self, task_name: str, sks: list[str]) -> list[Item | None]:
        return [await self.get(task_name, sk) for sk in sks]

    async def exists(self, task_name: str, sk: str) -> bool:
        return self._key(task_name, sk) in self.tables.items

    async def recorded_as(self, task_name: str, sk: str, attribute: str, value: str) -> bool:
        found = self.tables.items.get(self._key(task_name, sk))
        return found is not None and found.get(attribute) == value

    async def query_prefix(self, task_name: str, prefix: str) -> list[Item]:
        return [
            _stored(item)
            for (table, task, sk), item in sorted(self.tables.items.items())
            if table == self.table and task == task_name and sk.startswith(prefix)
        ]

    async def put(
        self,
        item: Mapping[str, Any],
        condition: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> bool:
        key = self._key(str(item[TABLE_PARTITION_KEY]), str(item[TABLE_SORT_KEY]))
        if not evaluate(condition, self.tables.items.get(key), {}, _stored(values or {})):
            return False
        self.tables.write(key, _stored(item))
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
        remove: Collection[str] = (),
    ) -> dict[str, Any]:
        """The same operation `DynamoRecords.update_op` describes, for this class's
        `update` and `transact` (default condition: the item exists)."""
        adds = {k: set(v) for k, v in (add_to_sets or {}).items() if v}
        deletes = {k: set(v) for k, v in (delete_from_sets or {}).items() if v}
        if not values and not adds and not deletes and not remove:
            raise ValueError(f"update of {sk!r} in task {task_name!r} changes nothing")
        return {
            "key": self._key(task_name, sk),
            "set": _stored(values),
            "add": adds,
            "delete": deletes,
            "remove": tuple(remove),
            "condition": condition or "attribute_exists(#pk)",
            "values": _stored(condition_values or {}),
        }

    def _holds(self, op: Mapping[str, Any]) -> bool:
        return evaluate(op["condition"], self.tables.items.get(op["key"]), {}, op["values"])

    def _apply(self, op: Mapping[str, Any]) -> None:
        _, task_name, sk = op["key"]
        item = dict(self.tables.items.get(op["key"]) or {})
        item.update({TABLE_PARTITION_KEY: task_name, TABLE_SORT_KEY: sk, **op["set"]})
        for name, members in op["add"].items():
            item[name] = set(item.get(name) or ()) | members
        for name, members in op["delete"].items():
            left = set(item.get(name) or ()) - members
            if left:
                item[name] = left
            else:
                item.pop(name, None)  # DynamoDB has no empty set
        for name in op["remove"]:
            item.pop(name, None)
        self.tables.write(op["key"], item)

    async def update(self, op: dict[str, Any]) -> bool:
        if not self._holds(op):
            return False
        self._apply(op)
        return True

    async def transact(self, ops: list[dict[str, Any]]) -> bool:
        keys = [op["key"] for op in ops]
        if len(set(keys)) != len(keys):
            raise ValueError("a transaction names one item twice (DynamoDB refuses it)")
        if not all(self._holds(op) for op in ops):
            return False
        for op in ops:
            self._apply(op)
        return True


@dataclass
class _Object:
    data: bytes
    metadata: dict[str, str]


class MemoryObjects:
    """`Objects` in memory: one bucket's objects with their metadata."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.objects: dict[str, _Object] = {}

    async def upload_file(
        self, key: str, path: Path, *, sha256: str, part_size: int, on_bytes: Advance | None = None
    ) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        for start in range(0, len(data), part_size):
            if on_bytes is not None:
                on_bytes(len(data[start : start + part_size]))
        self.objects[key] = _Object(data, {"sha256": sha256})

    async def download_file(
        self,
        key: str,
        dest: Path,
        *,
        sha256: str,
        max_bytes: int | None = None,
        on_bytes: Advance | None = None,
    ) -> int:
        found = self.objects.get(key)
        if found is None:
            raise CorruptDownloadError(
                f"global model {key!r} is missing from bucket {self.bucket!r}",
                key=key, expected=sha256, actual=MISSING,
            )  # fmt: skip
        if max_bytes is not None and len(found.data) > max_bytes:
            raise PayloadTooLargeError(
                f"global model {key!r} is {len(found.data)} bytes; the limit is {max_bytes}"
            )
        actual = hashlib.sha256(found.data).hexdigest()
        if actual != sha256:
            raise CorruptDownloadError(
                f"global model {key!r} is not the announced one",
                key=key, expected=sha256, actual=actual,
            )  # fmt: skip
        await asyncio.to_thread(dest.write_bytes, found.data)
        if on_bytes is not None:
            on_bytes(len(found.data))
        return len(found.data)

    async def get_bytes(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        found = self.objects.get(key)
        if found is None:
            error = MissingObjectError if named_by_silo else RegistryError
            raise error(f"object {key!r} is missing from the model bucket (S3 answered NoSuchKey)")
        if max_bytes is not None and len(found.data) > max_bytes:
            raise PayloadTooLargeError(
                f"object {key!r} is {len(found.data)} bytes; the limit is {max_bytes}"
            )
        return found.data

    async def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        for key in keys:
            yield await self.get_bytes(key, max_bytes, named_by_silo=named_by_silo)

    async def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        self.objects[key] = _Object(bytes(data), {"sha256": sha256})

    async def put_bytes_once(self, key: str, data: bytes, sha256: str) -> tuple[bytes, str]:
        found = self.objects.get(key)
        if found is not None:
            return found.data, hashlib.sha256(found.data).hexdigest()
        await self.put_bytes(key, data, sha256)
        return data, sha256


class MemoryNotices:
    """`Notices` in memory: each notice sent, with its recipients, per topic shard."""

    def __init__(self, topic_shards: int = 1) -> None:
        self.topic_shards = topic_shards
        self.sent: list[tuple[GlobalModelNotice, tuple[str, ...]]] = []

    async def publish(self, notice: GlobalModelNotice, client_ids: tuple[str, ...]) -> int:
        shards: dict[int, list[str]] = {}
        for client_id in client_ids:
            shards.setdefault(topic_shard(client_id, self.topic_shards), []).append(client_id)
        for _, recipients in sorted(shards.items()):
            self.sent.append((notice, tuple(recipients)))
        return len(shards)


@dataclass
class _Wait:
    execution_arn: str
    answer: dict[str, Any] | None = None
    failure: tuple[str, str] | None = None
    heartbeats: int = 0


class MemoryExecutions:
    """`Executions` in memory. A test plays the state machine: `wait` mints a task token
    for an execution's wait state and records the message that state sent (what
    `sent_messages` gives back, newest first); an answered token is spent."""

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.inputs: dict[str, dict[str, Any]] = {}
        self.waits: dict[str, _Wait] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}

    async def start(self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]) -> str:
        arn = execution_arn_for(state_machine_arn, name)
        if arn not in self.executions:
            self.executions[arn] = Execution(execution_arn=arn, status="RUNNING")
            self.inputs[arn] = dict(task_input)
        return arn

    def wait(self, execution_arn: str, message: dict[str, Any], token: str) -> None:
        """The execution's wait state sends `message` (with `token` in it)."""
        self.waits[token] = _Wait(execution_arn)
        self.messages.setdefault(execution_arn, []).append(message)

    async def describe(self, execution_arn: str) -> Execution:
        found = self.executions.get(execution_arn)
        if found is None:
            raise RegistryError(f"execution {execution_arn!r} does not exist")
        return found

    async def status(self, execution_arn: str) -> str:
        found = self.executions.get(execution_arn)
        return found.status if found is not None else "NONE"

    async def stop(self, execution_arn: str, error: str, cause: str) -> bool:
        found = self.executions.get(execution_arn)
        if found is None:
            return False
        self.executions[execution_arn] = Execution(
            execution_arn=execution_arn, status="ABORTED", error=error, cause=cause
        )
        return True

    def _live(self, token: str) -> _Wait | None:
        wait = self.waits.get(token)
        return wait if wait is not None and wait.answer is None and wait.failure is None else None

    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.answer = dict(output)
        return True

    async def send_failure(self, token: str, error: str, cause: str) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.failure = (error, cause)
        return True

    async def send_heartbeat(self, token: str) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.heartbeats += 1
        return True

    async def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]:
        if execution_arn not in self.executions:
            raise ExecutionNotFoundError(
                f"execution {execution_arn!r} is unknown to Step Functions"
            )
        for body in reversed(self.messages.get(execution_arn, [])):
            yield body

    async def find_state_machine(self, name: str) -> str | None:
        return None
