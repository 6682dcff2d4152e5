"""The event JSON Lambda hands to a function, built from what the pumps read.

DynamoDB stream and SQS events have the shapes Lambda documents, so a handler cannot
tell the embedded stack from AWS; the run's event log stores them as JSON lines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def stream_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A DynamoDB Streams GetRecords record as Lambda delivers it (JSON-safe)."""
    ddb = dict(raw["dynamodb"])
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        # Lambda delivers epoch seconds, not the SDK's datetime
        ddb["ApproximateCreationDateTime"] = round(created.timestamp(), 3)
    return {
        "eventID": raw["eventID"],
        "eventName": raw["eventName"],
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion", region),
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    # Lambda spells SQS message attributes in camelCase, unlike ReceiveMessage
    out: dict[str, Any] = {
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = value["BinaryValue"]
    return out


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS ReceiveMessage message as Lambda's SQS event source delivers it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _message_attribute(value)
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class LocalLambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 512
    timeout_s: float = 900.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def function_version(self) -> str:
        return "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_s - (time.monotonic() - self.started)
        return max(0, int(left * 1000))


class EventLog:
    """Append-only JSON lines of every delivered event, shared by all pumps of a run."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, source: str, event: Event) -> None:
        entry = {"seq": len(self.entries), "source": source, "event": event}
        with self._lock:
            entry["seq"] = len(self.entries)
            self.entries.append(entry)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(entry, sort_keys=True) + "\n")

    def events(self, source: str | None = None) -> list[Event]:
        with self._lock:
            return [e["event"] for e in self.entries if source in (None, e["source"])]
