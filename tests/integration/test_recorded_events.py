"""Recorded Lambda events (tests/events/*.json) fed to the handlers as Lambda delivers them.

Each file is one invocation's event, in the shape Lambda documents for its DynamoDB
Streams and SQS event sources (a `Records` list; stream images in DynamoDB JSON; SQS
bodies as strings with their MD5). The handlers run through their public entry,
`lambda_handler(event, context)`, on the embedded stack, with the aggregate stream pump
off: the test alone decides what the aggregate function sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.events import LocalLambdaContext
from fedasync.local.filters import matches
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import AGGREGATE_STREAM_FILTER, ClientSpec
from fedasync.server.tasks import start_task
from server_lambdas import aggregate, control
from tests.integration.scripted import ScriptedClient
from tests.integration.test_server_async import first_notice
from tests.integration.test_server_sync import clients_for, store_for

EVENTS = Path(__file__).resolve().parents[1] / "events"
TASK = "rec"  # the task the recorded events name
CLIENTS = ("a", "b")
X0 = {"dense/bias": np.zeros(2, np.float32), "dense/kernel": np.zeros((2, 2), np.float32)}
# silo a's model, whose bytes the recorded INSERT's image names (s3_key, sha256, size)
XA = {
    "dense/bias": np.array([0.5, -0.25], np.float32),
    "dense/kernel": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
}


def recorded(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


class Rec:
    def __init__(self, stack: EmbeddedStack, silo: ScriptedClient) -> None:
        self.stack, self.silo = stack, silo

    async def global_model(self, version: int) -> dict[str, np.ndarray] | None:
        s3 = await self.stack.aws.s3()
        try:
            got = await s3.get_object(
                Bucket=self.stack.endpoints.bucket, Key=keys.global_key(TASK, version)
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return codec.decode(await got["Body"].read())

    async def silo_writes(self, image: dict[str, Any], blob: bytes | None = None) -> None:
        """What silo 'a' did before the recorded INSERT: its object, then its item."""
        if blob is not None:
            s3 = await self.silo.aws.s3()
            await s3.put_object(Bucket=self.silo.bucket, Key=image["s3_key"]["S"], Body=blob)
        ddb = await self.silo.aws.dynamodb()
        await ddb.put_item(TableName=self.silo.table, Item=image)


@pytest.fixture
async def rec(moto_server, prefix) -> AsyncIterator[Rec]:
    """An async task 'rec' at version 0 (FedAsync, alpha 0.5, constant staleness)."""
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    cfg = TaskConfig.parse(
        {
            "task_name": TASK,
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "staleness": "constant",
            "max_model_bytes": 4096,
        }
    )
    async with EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, aggregate_handler=None
    ) as stack:
        await start_task(store_for(stack), stack.endpoints.state_machine_arn, cfg, X0)
        silo = clients_for(stack, CLIENTS, (5, 5))[0]
        await first_notice(silo)  # the task is open: the silo was told of version 0
        yield Rec(stack, silo)


def invoke(handler: Any, event: dict[str, Any], name: str) -> Any:
    return asyncio.to_thread(handler.lambda_handler, event, LocalLambdaContext(name))


async def test_a_recorded_stream_batch_absorbs_the_update_once_and_the_filter_drops_the_heartbeat(
    rec,
):
    event = recorded("aggregate_update_batch.json")
    heartbeat, insert = event["Records"]
    image = insert["dynamodb"]["NewImage"]
    blob = codec.encode(XA)
    # the recording names these bytes (hashlib, not the code under test, says so)
    assert hashlib.sha256(blob).hexdigest() == image["sha256"]["S"]
    assert len(blob) == int(image["size_bytes"]["N"])
    # GIVEN silo 'a' uploaded its model and wrote the update item of the recorded INSERT
    await rec.silo_writes(image, blob)
    # WHEN Lambda's event filter on the stream mapping sees the batch
    # THEN the heartbeat's MODIFY never invokes the function; the update's INSERT does
    assert not matches(AGGREGATE_STREAM_FILTER, heartbeat)
    assert matches(AGGREGATE_STREAM_FILTER, insert)
    # WHEN the aggregate function gets the recorded batch (unfiltered, the heartbeat too)
    response = await invoke(aggregate, event, "aggregate")
    # THEN no record is reported failed, and version 1 is FedAsync of x0 and a's model at
    #   alpha 0.5, staleness 0: 0.5 * 0 + 0.5 * xa, by hand
    assert response == {"batchItemFailures": []}
    expected = {
        "dense/bias": np.array([0.25, -0.125], np.float32),
        "dense/kernel": np.array([[0.5, 1.0], [1.5, 2.0]], np.float32),
    }
    v1 = await rec.global_model(1)
    assert v1 is not None
    for name, value in expected.items():
        np.testing.assert_array_equal(v1[name], value)
    # WHEN Lambda delivers the same batch again (at-least-once)
    again = await invoke(aggregate, event, "aggregate")
    # THEN it is not a second update: no failure, no version 2, version 1 unchanged
    assert again == {"batchItemFailures": []}
    assert await rec.global_model(2) is None
    v1_again = await rec.global_model(1)
    assert v1_again is not None
    for name, value in expected.items():
        np.testing.assert_array_equal(v1_again[name], value)


async def test_malformed_stream_records_are_reported_not_retried_and_leave_the_head(rec):
    event = recorded("aggregate_malformed_batch.json")
    junk, keyless = event["Records"]
    # GIVEN a silo wrote an item under UPDATE# that is no update record (the first record:
    #   base_version not a number, metrics not a map, no s3_key, sha256 or size)
    await rec.silo_writes(junk["dynamodb"]["NewImage"])
    assert not isinstance(keyless["dynamodb"]["Keys"], dict)
    # WHEN the aggregate function gets it, and a record whose keys are not a map
    with capture_logs() as logged:
        response = await invoke(aggregate, event, "aggregate")
    # THEN neither is kept for retry (retrying cannot fix them, and a failed record would
    #   hold the shard's later ones), nothing crashed, and each was logged with a reason
    assert response == {"batchItemFailures": []}
    reported = [e for e in logged if e["log_level"] in ("warning", "error") and "reason" in e]
    assert len(reported) >= 2, logged
    assert not [e for e in logged if e["log_level"] in ("exception", "critical")]
    # AND the global model did not move
    assert await rec.global_model(1) is None


async def test_a_recorded_control_batch_drops_a_broken_and_an_unknown_message_with_reasons(rec):
    event = recorded("control_batch.json")
    broken, unknown = event["Records"]
    assert all(
        hashlib.md5(r["body"].encode()).hexdigest() == r["md5OfBody"]  # SQS's own digest
        for r in event["Records"]
    )
    # GIVEN the control queue delivered a body that is not JSON and an open_task for a
    #   task that does not exist
    # WHEN the control function gets the batch
    with capture_logs() as logged:
        response = await invoke(control, event, "control")
    # THEN neither is kept for retry (nor reaches the DLQ); each is logged with a reason
    #   that names it (the broken one by its message id, the other by its task)
    assert response == {"batchItemFailures": []}
    assert "no-such-task" in unknown["body"]
    for needle in (broken["messageId"], "no-such-task"):
        about = [e for e in logged if "reason" in e and needle in json.dumps(e, default=str)]
        assert about, (needle, logged)
    # AND the task the stack runs is untouched: still at version 0, nothing published
    assert await rec.global_model(1) is None
