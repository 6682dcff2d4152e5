"""The aggregate function's batch handling, pure: which stream records are work, and
stop-at-first-failure (`server_lambdas._batch.StreamOrderProcessor`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from fedasync.server.stream import Work, leading_run, work_of
from server_lambdas._batch import StreamOrderProcessor


def record(event_name: str, sk: str, seq: str, **image: Any) -> dict[str, Any]:
    keys = {"task_name": {"S": "digits"}, "sk": {"S": sk}}
    new_image = {**keys, **{k: {"S": str(v)} for k, v in image.items()}}
    return {
        "eventID": seq,
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": keys, "NewImage": new_image, "SequenceNumber": seq},
    }


def test_update_writes_are_work_and_name_forged_attributes() -> None:
    # GIVEN an insert, a re-put with a forged verdict, a heartbeat and a removal
    insert = record("INSERT", "UPDATE#00000001#a", "1")
    reput = record("MODIFY", "UPDATE#00000001#a", "2", verdict="accepted")
    # THEN only the update writes are work, the forged attribute named
    assert work_of(insert) == Work("digits", "UPDATE#00000001#a", "INSERT")
    assert work_of(reput) == Work("digits", "UPDATE#00000001#a", "MODIFY", ("verdict",))
    assert work_of(record("INSERT", "HEARTBEAT#a", "3")) is None
    assert work_of(record("REMOVE", "UPDATE#00000001#a", "4")) is None
    assert work_of({"eventName": "INSERT", "dynamodb": {"Keys": {"sk": {"Q": 1}}}}) is None


def test_a_run_is_the_leading_inserts_of_one_task_and_stops_at_a_reput() -> None:
    records = [
        record("INSERT", "UPDATE#u1", "1"),
        record("INSERT", "HEARTBEAT#a", "2"),
        record("INSERT", "UPDATE#u2", "3"),
        record("MODIFY", "UPDATE#u1", "4"),
        record("INSERT", "UPDATE#u3", "5"),
    ]
    assert leading_run(records) == ("digits", ["UPDATE#u1", "UPDATE#u2"], [0, 2])


def test_records_after_the_first_failure_are_reported_failed_unprocessed() -> None:
    # GIVEN a batch of four records whose second fails
    seen: list[str] = []

    def handler(record: DynamoDBRecord) -> None:
        seq = str(record.dynamodb.sequence_number if record.dynamodb else "")
        seen.append(seq)
        if seq == "2":
            raise RuntimeError("boom")

    records = [record("INSERT", f"UPDATE#u{i}", str(i)) for i in range(1, 5)]
    event = {"Records": records}
    # WHEN the stream-order processor runs them
    response = process_partial_response(
        event=event, record_handler=handler, processor=StreamOrderProcessor(), context=None
    )
    # THEN the handler saw 1 and 2 only, and 2, 3 and 4 are reported for retry, in order
    assert seen == ["1", "2"]
    assert response == {"batchItemFailures": [{"itemIdentifier": s} for s in ("2", "3", "4")]}
