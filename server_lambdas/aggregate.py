"""Inbox stream -> the server's decisions (wiring only: fedasync/server/stream.py)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from fedasync.server import stream
from server_lambdas._batch import StreamOrderProcessor
from server_lambdas._runtime import runtime

processor = StreamOrderProcessor()


def record_handler(record: DynamoDBRecord) -> None:
    work = stream.work_of(record.raw_event)
    if work is not None:
        runtime.run(lambda store: stream.handle(store, work))


def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records:
        done = runtime.run(lambda store: stream.decide_leading_run(store, records))
        if done == len(records):
            return {"batchItemFailures": []}
        event = {**event, "Records": records[done:]}
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
