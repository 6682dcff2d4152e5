"""The inbox's stream records, as the aggregate function receives them: which are work.

A record is work when it is a write (INSERT: a submission; MODIFY: a re-put, nothing or
a new submission) of an update item; anything else, a record that does not parse
included, is skipped: retrying cannot fix it, and failing it would hold the shard's
later records. A run of one task's leading INSERTs is decided together
(`updates.decide_run`); the rest goes record by record (`updates.on_update`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from fedasync.aws.records import deserialize_item
from fedasync.core.keys import UPDATE_PREFIX
from fedasync.core.verdicts import VERDICT_ATTRIBUTES
from fedasync.server.store import ServerStore
from fedasync.server.updates import decide_run, on_update

log = structlog.get_logger()
WRITES = ("INSERT", "MODIFY")


@dataclass(frozen=True)
class Work:
    task_name: str
    sk: str
    event_name: str
    # server-owned attribute names in the image: the silo wrote them (names, not values)
    forged: tuple[str, ...] = ()


def work_of(raw: Mapping[str, Any]) -> Work | None:
    """The update write a stream record carries, or None (see the module docstring)."""
    try:
        ddb = raw.get("dynamodb")
        event_name = raw.get("eventName")
        if event_name not in WRITES or not isinstance(ddb, Mapping):
            return None
        keys = deserialize_item(ddb.get("Keys") or {})
        image = ddb.get("NewImage")
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        log.warning("aggregate.skipped", reason="malformed_record", error=repr(exc)[:200])
        return None
    task_name, sk = keys.get("task_name"), keys.get("sk")
    if not isinstance(task_name, str) or not isinstance(sk, str):
        return None
    if not sk.startswith(UPDATE_PREFIX):
        return None
    forged = sorted(set(image) & set(VERDICT_ATTRIBUTES)) if isinstance(image, Mapping) else []
    return Work(task_name, sk, str(event_name), tuple(forged))


async def handle(store: ServerStore, work: Work) -> None:
    try:
        await on_update(store, work.task_name, work.sk, forged=work.forged)
    except Exception:
        log.exception("aggregate.failed", task_name=work.task_name, sk=work.sk)
        raise


def leading_run(records: Sequence[Any]) -> tuple[str, list[str], list[int]]:
    """The batch's leading new updates of one task: (task_name, sks, their positions).

    Skips records that are no work; stops at a re-put (MODIFY: the one-by-one path tells
    nothing from a new submission), at another task's update and at a record that does
    not parse."""
    task, sks, positions = "", [], []
    for position, raw in enumerate(records):
        if not isinstance(raw, Mapping) or raw.get("eventName") is None:
            break
        work = work_of(raw)
        if work is None and raw.get("eventName") in (*WRITES, "REMOVE"):
            continue
        if work is None or work.event_name != "INSERT" or (task and work.task_name != task):
            break
        task = work.task_name
        sks.append(work.sk)
        positions.append(position)
    return task, sks, positions


async def decide_leading_run(store: ServerStore, records: Sequence[Any]) -> int:
    """How many leading records a run decision settled (`decide_run`: one commit for an
    async run, one round check for a sync one). Anything unexpected leaves all of them to
    the one-by-one path, which redoes (idempotently) and reports it."""
    try:
        task_name, sks, positions = leading_run(records)
        if not sks:
            return 0
        decided = await decide_run(store, task_name, sks)
    except Exception:
        log.exception("aggregate.run_failed")
        return 0
    return positions[decided - 1] + 1 if decided else 0
