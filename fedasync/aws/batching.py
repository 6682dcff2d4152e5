"""DynamoDB batch reads within their limits: 100 keys a call, unprocessed keys retried."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# DynamoDB's limit on one BatchGetItem; the caller's keys go in batches of this size.
BATCH_GET_MAX_KEYS = 100
# Unprocessed keys are asked again after 50 ms, 100 ms, ... capped at 2 s: AWS's advice
# for batch operations is exponential backoff (an immediate retry meets the same throttle).
UNPROCESSED_RETRIES = 10
UNPROCESSED_BACKOFF_S = 0.05
UNPROCESSED_BACKOFF_CAP_S = 2.0

BatchCall = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def drain_unprocessed(call: BatchCall, request: dict[str, Any], *, what: str) -> None:
    """Send `request`, then what each answer left unprocessed, backing off between tries;
    raise (so the event is retried whole) if keys are still left after the last one."""
    for attempt in range(UNPROCESSED_RETRIES + 1):
        request = await call(request)
        if not request:
            return
        if attempt < UNPROCESSED_RETRIES:
            await asyncio.sleep(min(UNPROCESSED_BACKOFF_CAP_S, UNPROCESSED_BACKOFF_S * 2**attempt))
    left = sum(len(table.get("Keys", [])) for table in request.values())
    raise RuntimeError(
        f"reading {what}: {left} key(s) still unprocessed after "
        f"{UNPROCESSED_RETRIES} retries; DynamoDB is throttling the table"
    )
