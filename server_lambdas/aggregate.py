"""Inbox stream -> aggregation. Writes of update items are work (an INSERT: a submission;
a MODIFY: a re-put, which is nothing or a new submission); heartbeats are not."""

from __future__ import annotations

from typing import Any

import structlog
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from fedasync.core.keys import UPDATE_PREFIX
from fedasync.core.verdicts import VERDICT_ATTRIBUTES
from fedasync.server.updates import decide_run, on_update
from server_lambdas._runtime import runtime

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
log = structlog.get_logger()


class _OrderGuard:
    """After one record of a batch fails, fail the rest unprocessed: Lambda retries from the
    first failure, and a task's updates must apply in stream order."""

    failed = False


def record_handler(record: DynamoDBRecord) -> None:
    if _OrderGuard.failed:
        raise RuntimeError("an earlier record of this batch failed; kept for retry in order")
    try:
        _handle(record)
    except Exception:
        _OrderGuard.failed = True
        raise


def _forged(record: DynamoDBRecord) -> list[str]:
    """Server-owned attributes in the image: the client wrote them (the server never
    writes the inbox; its verdicts are in the server table). Names only, not values."""
    ddb = record.raw_event.get("dynamodb")
    image = ddb.get("NewImage") if isinstance(ddb, dict) else None
    return sorted(set(image) & set(VERDICT_ATTRIBUTES)) if isinstance(image, dict) else []


def _keys(record: DynamoDBRecord) -> tuple[object, object] | None:
    """(task_name, sk) of an INSERT or MODIFY; None for anything else, including a record
    that does not parse: retrying cannot fix it, and failing it would hold the shard's
    later records."""
    try:
        if record.event_name is None or record.event_name.name not in ("INSERT", "MODIFY"):
            return None
        keys = (record.dynamodb.keys if record.dynamodb is not None else None) or {}
        return keys.get("task_name"), keys.get("sk")
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        log.warning("aggregate.skipped", reason="malformed_record", error=repr(exc)[:200])
        return None


def _work(found: tuple[object, object] | None) -> tuple[str, str] | None:
    """(task_name, sk) of a new update record; None for everything else (our own writes)."""
    if found is None:
        return None
    task_name, sk = found
    if (
        not isinstance(task_name, str)
        or not isinstance(sk, str)
        or not sk.startswith(UPDATE_PREFIX)
    ):
        return None
    return task_name, sk


def _handle(record: DynamoDBRecord) -> None:
    work = _work(_keys(record))
    if work is None:
        return
    task_name, sk = work
    forged = _forged(record)
    try:
        runtime.run(lambda store: on_update(store, task_name, sk, forged=forged))
    except Exception:
        log.exception("aggregate.failed", task_name=task_name, sk=sk)
        raise


def _leading_run(records: list[Any]) -> tuple[str, list[str], list[int]]:
    """The batch's leading new updates of one task: (task_name, sks, their positions).

    Stops at the first record that does not parse: the one-by-one path deals with it."""
    task, sks, positions = "", [], []
    for position, raw in enumerate(records):
        record = DynamoDBRecord(raw)
        if record.event_name is None:
            break
        if record.event_name.name != "INSERT":
            break  # a re-put (MODIFY): the one-by-one path tells nothing from a new submission
        keys = (record.dynamodb.keys if record.dynamodb is not None else None) or {}
        work = _work((keys.get("task_name"), keys.get("sk")))
        if work is None or (task and work[0] != task):
            break
        task = work[0]
        sks.append(work[1])
        positions.append(position)
    return task, sks, positions


def _decide_leading_run(records: list[Any]) -> int:
    """A task's queued updates decided together (`decide_run`: one commit for an async
    run, one round check for a sync one); returns how many leading records are done.
    Anything unexpected leaves all to the one-by-one path."""
    try:
        task_name, sks, positions = _leading_run(records)
        if not sks:
            return 0
        decided = runtime.run(lambda store: decide_run(store, task_name, sks))
    except Exception:  # the one-by-one path redoes (idempotently) and reports it
        log.exception("aggregate.run_failed")
        return 0
    return positions[decided - 1] + 1 if decided else 0


def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    _OrderGuard.failed = False
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records:
        done = _decide_leading_run(records)
        if done == len(records):
            return {"batchItemFailures": []}
        event = {**event, "Records": records[done:]}
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
