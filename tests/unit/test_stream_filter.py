"""The aggregate mapping's event filter, as the embedded StreamPump applies it."""

from __future__ import annotations

from typing import Any

import pytest

from fedasync.local.filters import check_pattern, matches
from fedasync.resources import AGGREGATE_STREAM_FILTER


def record(event_name: str, sk: str) -> dict[str, Any]:
    """A stream record as Lambda delivers it (the fields a filter can see)."""
    return {
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"task_name": {"S": "digits"}, "sk": {"S": sk}},
            "NewImage": {"task_name": {"S": "digits"}, "sk": {"S": sk}},
        },
    }


@pytest.mark.parametrize(
    ("event_name", "sk", "invokes"),
    [
        ("INSERT", "UPDATE#00000003#bank-1", True),  # a sync update
        ("INSERT", "UPDATE#u-7f3a", True),  # an async update
        # a silo's re-put (the server's verdicts are in the server table, not streamed):
        # nothing, or a new submission after a rejection (fedasync.core.verdicts)
        ("MODIFY", "UPDATE#00000003#bank-1", True),
        ("REMOVE", "UPDATE#00000003#bank-1", False),
        ("INSERT", "HEARTBEAT#bank-1", False),  # a silo's heartbeat
        ("MODIFY", "HEARTBEAT#bank-1", False),
        ("INSERT", "TASK", False),
        ("INSERT", "ROUND#00000003", False),
        ("INSERT", "update#lowercase", False),  # prefix matching is case-sensitive
    ],
)
def test_only_writes_of_update_items_pass(event_name: str, sk: str, invokes: bool) -> None:
    assert matches(AGGREGATE_STREAM_FILTER, record(event_name, sk)) is invokes


def test_a_record_without_the_filtered_field_does_not_pass() -> None:
    assert not matches(AGGREGATE_STREAM_FILTER, {"eventName": "INSERT", "dynamodb": {}})
    assert not matches(AGGREGATE_STREAM_FILTER, {"eventName": "INSERT"})
    assert not matches({"dynamodb": {"Keys": ["x"]}}, {"dynamodb": "not an object"})


def test_literals_match_by_value_and_type_and_arrays_by_any_element() -> None:
    assert matches({"n": [1]}, {"n": 1})
    assert not matches({"n": ["1"]}, {"n": 1})
    assert matches({"tags": ["b"]}, {"tags": ["a", "b"]})
    assert matches({"tags": [{"prefix": "x-"}]}, {"tags": ["a", "x-1"]})


@pytest.mark.parametrize(
    "pattern",
    [
        {"eventName": "INSERT"},  # a bare value, not a list
        {"eventName": []},
        {"n": [{"numeric": [">", 0]}]},
        {"sk": [{"anything-but": "TASK"}]},
        {"sk": [{"prefix": 3}]},
    ],
)
def test_rules_outside_the_supported_subset_are_refused(pattern: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="filter key"):
        check_pattern(pattern)


def test_the_shared_pattern_is_within_the_subset() -> None:
    check_pattern(AGGREGATE_STREAM_FILTER)
