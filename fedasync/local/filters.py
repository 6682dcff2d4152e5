"""Lambda's event filtering (FilterCriteria), for the subset of its pattern syntax we use.

A pattern is a JSON object. Each of its keys must match the event: a nested object
matches the event's object at that key, and a list matches when the event's value
equals one of its literals or satisfies one of its `{"prefix": ...}` rules (an event
array matches when one of its elements does). A key the event lacks does not match.
Any other rule (`anything-but`, `numeric`, `exists`, ...) is refused when the pattern
is checked, so a filter we start using can't be misread here and read otherwise by
Lambda.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MISSING = object()


def check_pattern(pattern: Mapping[str, Any]) -> None:
    """Raise ValueError for anything outside the subset `matches` implements."""
    for key, rule in pattern.items():
        if isinstance(rule, Mapping):
            check_pattern(rule)
            continue
        if not isinstance(rule, list) or not rule:
            raise ValueError(f"filter key {key!r}: a rule is an object or a non-empty list")
        for option in rule:
            if isinstance(option, Mapping) and (
                set(option) != {"prefix"} or not isinstance(option["prefix"], str)
            ):
                raise ValueError(f"filter key {key!r}: only {{'prefix': str}} is supported")


def _value_matches(options: list[Any], value: Any) -> bool:
    if isinstance(value, list):
        return any(_value_matches(options, v) for v in value)
    for option in options:
        if isinstance(option, Mapping):
            if isinstance(value, str) and value.startswith(option["prefix"]):
                return True
        elif option == value and type(option) is type(value):
            return True
    return False


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether one record passes the filter (Lambda invokes only for those that do)."""
    for key, rule in pattern.items():
        value = event.get(key, _MISSING)
        if value is _MISSING:
            return False
        if isinstance(rule, Mapping):
            if not isinstance(value, Mapping) or not matches(rule, value):
                return False
        elif not _value_matches(rule, value):
            return False
    return True
