"""In-memory `Records`: tables of items, with the DynamoDB conditions the code uses.

See `fedasync.aws.memory` for why these exist and how they are held to the AWS contract.
Items round-trip through the DynamoDB attribute encoding (`serialize_item`), so a float
comes back as DynamoDB would give it; a failed condition is `False`; a transaction checks
every condition before it writes anything; a comparison with a missing attribute is
false. The condition language is the subset the code uses (`evaluate`):
`attribute_exists(#a)`, `attribute_not_exists(#a)`, `#a = :v`, `#a <> :v`,
`#a IN (:x, :y)`, joined by AND and OR (AND binds tighter), names with or without their
`#` placeholder. Anything else is a `ValueError`, so a new condition cannot pass here
unread.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedasync.aws.attributes import Item, deserialize_item, serialize_item
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY

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
