"""Batch reads: what DynamoDB leaves unprocessed is asked again, and only that."""

from __future__ import annotations

from typing import Any

import pytest

from fedasync.aws import batching


def keys_request(*sks: str) -> dict[str, Any]:
    return {"table": {"Keys": [{"sk": {"S": sk}} for sk in sks], "ConsistentRead": True}}


class ThrottledTable:
    """A stand-in for one BatchGetItem call of ours: leaves the last key of each request
    unprocessed `throttles` times, then processes everything."""

    def __init__(self, throttles: int) -> None:
        self.throttles = throttles
        self.requests: list[list[str]] = []

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        sks = [k["sk"]["S"] for k in request["table"]["Keys"]]
        self.requests.append(sks)
        if self.throttles == 0:
            return {}
        self.throttles -= 1
        return keys_request(sks[-1])


async def test_unprocessed_keys_are_asked_again_until_none_are_left(monkeypatch) -> None:
    monkeypatch.setattr(batching, "UNPROCESSED_BACKOFF_S", 0.0)
    # GIVEN a table that leaves one key unprocessed twice
    table = ThrottledTable(throttles=2)
    # WHEN three keys are read
    await batching.drain_unprocessed(table, keys_request("a", "b", "c"), what="test")
    # THEN the first call asks for all three, each retry only for what was left
    assert table.requests == [["a", "b", "c"], ["c"], ["c"]]


async def test_keys_still_unprocessed_after_the_last_retry_raise(monkeypatch) -> None:
    monkeypatch.setattr(batching, "UNPROCESSED_BACKOFF_S", 0.0)
    monkeypatch.setattr(batching, "UNPROCESSED_BACKOFF_CAP_S", 0.0)
    # GIVEN a table that never processes the last key
    table = ThrottledTable(throttles=10**6)
    # WHEN two keys are read THEN the read fails naming what is left, after 1 + 10 calls
    with pytest.raises(RuntimeError, match=r"items of task 'x': 1 key\(s\) still unprocessed"):
        await batching.drain_unprocessed(table, keys_request("a", "b"), what="items of task 'x'")
    assert len(table.requests) == 1 + batching.UNPROCESSED_RETRIES
