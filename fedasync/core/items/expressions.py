"""Condition expressions on the server's items, built from the attribute names the codec
exports (`task.FINISHED`, `verdict.VERDICT`, `round.CLOSED`, ...), so that no write spells
an attribute name in a string of its own (`tests/unit/test_item_literals.py` holds the
server and the operator tools to it).

Each attribute is named by its `#name` placeholder, which the Records port maps back to
the name (`fedasync.aws.records.condition_names`); a value is named by the `:placeholder`
its caller puts in `condition_values`. What a builder returns is the very string that was
written by hand before: `absent(VERDICT)` is `"attribute_not_exists(#verdict)"`.
"""

from __future__ import annotations

# The Records port's placeholders for the table's own keys (`#pk`, `#sk`), which every
# item has: the item exists, or no item is under that key yet.
ITEM_EXISTS = "attribute_exists(#pk)"
ITEM_ABSENT = "attribute_not_exists(#sk)"


def _placeholder(value: str) -> str:
    if not value.startswith(":") or len(value) < 2:
        raise ValueError(f"a value placeholder starts with ':' (got {value!r})")
    return value


def absent(attribute: str) -> str:
    """The item has no `attribute` (or no item exists)."""
    return f"attribute_not_exists(#{attribute})"


def present(attribute: str) -> str:
    return f"attribute_exists(#{attribute})"


def equals(attribute: str, value: str) -> str:
    """`attribute` holds the value named `value` (`:expected`); false when absent."""
    return f"#{attribute} = :{_placeholder(value)[1:]}"


def one_of(attribute: str, *values: str) -> str:
    """`attribute` holds one of the values named `values` (`:starting`, `:running`)."""
    if not values:
        raise ValueError(f"one_of({attribute!r}) names no value")
    return f"#{attribute} IN ({', '.join(_placeholder(v) for v in values)})"


def all_of(*conditions: str) -> str:
    """Every condition holds (DynamoDB's AND)."""
    if not conditions:
        raise ValueError("all_of() of no condition")
    return " AND ".join(conditions)
