"""The silo client against the embedded stack over HTTP, the test playing the server.

The test uploads global models, publishes notices on the real SNS topic (fanned out to
the client's SQS queue by its filter policy) and reads what the client leaves behind in
S3, DynamoDB and SQS. No server handlers run here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from client.config import ClientConfig
from client.data import Dataset, demo_silo
from client.run import run_client
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.aws.models import S3ModelRegistry
from fedasync.aws.queues import SnsNotices
from fedasync.aws.records import DynamoRecords
from fedasync.core import codec, keys
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.messages import GlobalModelNotice, UpdateRecord
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec, StackSpec

TASK = "digits"
CLIENT = "silo-a"
RUN_TIMEOUT_S = 25


@pytest.fixture
async def stack(moto_server, prefix) -> AsyncIterator[EmbeddedStack]:
    spec = StackSpec(prefix=prefix, clients=(ClientSpec(client_id=CLIENT),))
    async with EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, aggregate_handler=None, control_handler=None
    ) as running:
        yield running


@pytest.fixture(scope="module")
def silo() -> Dataset:
    return demo_silo(0, 3, alpha=0.5, seed=0)[0]


def config(stack: EmbeddedStack, **over: Any) -> ClientConfig:
    fields: dict[str, Any] = {
        "task_name": TASK,
        "client_id": CLIENT,
        "endpoint_url": stack.endpoints.endpoint_url,
        "prefix": stack.spec.prefix,
        "heartbeat_interval_s": 0.5,
        "visibility_timeout_s": 2,
        "wait_time_s": 1,
        # as a silo is told (the stack config, CDK outputs): its role may not look it up
        "queue_url": stack.endpoints.client_queue_urls[CLIENT],
        "aws_access_key_id": stack.credentials(f"client:{CLIENT}").access_key_id,
        "aws_secret_access_key": stack.credentials(f"client:{CLIENT}").secret_access_key,
    }
    return ClientConfig(**(fields | over))


class Server:
    """The server's side of the wire, played by hand: globals in S3, notices on SNS."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.registry = S3ModelRegistry(stack.aws, stack.endpoints.bucket)
        self.records = DynamoRecords(stack.aws, stack.endpoints.table)
        self.queue_url = stack.endpoints.client_queue_urls[CLIENT]

    async def put_global(
        self,
        version: int,
        weights: codec.Weights | None = None,
        *,
        mode: str = "sync",
        final: bool = False,
    ) -> GlobalModelNotice:
        weights = weights or NumpyTrainer().init_weights(seed=version)
        key = keys.final_key(TASK) if final else keys.global_key(TASK, version)
        stored = await self.registry.put_bytes(key, codec.encode(weights))
        return GlobalModelNotice(
            task_name=TASK,
            mode=mode,
            version=version,
            round_id=version if mode == "sync" and not final else None,
            s3_key=key,
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            final=final,
        )

    async def publish(self, notice: GlobalModelNotice) -> None:
        await SnsNotices(self.stack.aws).publish(
            self.stack.endpoints.topic_arn, notice.to_json(), [CLIENT]
        )

    async def updates(self) -> list[dict[str, Any]]:
        return await self.records.query(TASK, keys.UPDATE_PREFIX)

    async def queue_depth(self) -> tuple[int, int]:
        """(visible, in flight) messages on the client's queue."""
        sqs = await self.stack.aws.sqs()
        attrs = (
            await sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    async def local_objects(self) -> list[str]:
        s3 = await self.stack.aws.s3()
        listed = await s3.list_objects_v2(
            Bucket=self.stack.endpoints.bucket, Prefix=keys.local_prefix(TASK, CLIENT)
        )
        return [o["Key"] for o in listed.get("Contents", [])]

    async def multipart_uploads(self) -> list[str]:
        s3 = await self.stack.aws.s3()
        listed = await s3.list_multipart_uploads(Bucket=self.stack.endpoints.bucket)
        return [u["Key"] for u in listed.get("Uploads", [])]


@pytest.fixture
def server(stack) -> Server:
    return Server(stack)


async def end_task_after(server: Server, condition: Any, wait_until: Any, version: int) -> None:
    await wait_until(condition, timeout_s=RUN_TIMEOUT_S)
    await server.publish(await server.put_global(version, final=True))


async def test_a_sync_notice_yields_one_update_then_the_final_notice_ends_the_run(
    stack, server, silo, wait_until
):
    # GIVEN global v1 announced for round 1
    notice = await server.put_global(1)
    await server.publish(notice)
    task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    # WHEN its update record appears and the server then announces the end
    await end_task_after(server, server.updates, wait_until, 1)
    report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN one update, keyed by round, lies in S3 with the SHA-256 its record names
    assert report.outcome == "final"
    [item] = await server.updates()
    record = UpdateRecord.parse({k: v for k, v in item.items() if k != "sk"})
    assert item["sk"] == f"UPDATE#00000001#{CLIENT}"
    assert record.s3_key == f"{TASK}/local/{CLIENT}/00000001-r00000001.safetensors"
    assert (record.round_id, record.base_version, record.num_examples) == (1, 1, len(silo))
    data = await server.registry.get_bytes(record.s3_key, sha256=record.sha256)
    local = codec.decode(data)
    assert list(local) == ["dense/kernel", "dense/bias"]
    assert not np.array_equal(local["dense/kernel"], NumpyTrainer().init_weights(1)["dense/kernel"])
    # AND every message is gone: handled, not merely hidden
    assert await server.queue_depth() == (0, 0)
    # AND the client said it stopped
    heartbeat = await server.records.get(TASK, keys.heartbeat_sk(CLIENT))
    assert heartbeat is not None
    assert heartbeat["status"] == "stopped"
    assert heartbeat["expires_at"] > time.time()


async def test_a_duplicated_notice_produces_one_update(stack, server, silo, wait_until):
    # GIVEN the same notice delivered twice (SNS and SQS are at-least-once)
    notice = await server.put_global(3)
    await server.publish(notice)
    await server.publish(notice)
    task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    await end_task_after(server, server.updates, wait_until, 3)
    report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN one update record and one object, and both messages deleted
    assert len(await server.updates()) == 1
    assert len(await server.local_objects()) == 1
    assert len(report.updates) == 1
    assert report.duplicates + report.already_recorded == 1
    assert await server.queue_depth() == (0, 0)


async def test_a_notice_redelivered_to_a_new_run_finds_its_update_recorded(
    stack, server, silo, wait_until
):
    # GIVEN a first run that recorded its update for round 2
    notice = await server.put_global(2)
    await server.publish(notice)
    first = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    await end_task_after(server, server.updates, wait_until, 2)
    await asyncio.wait_for(first, RUN_TIMEOUT_S)
    [before] = await server.updates()
    # WHEN the same notice reaches a fresh run (a delete that never happened, say)
    await server.publish(notice)
    second = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    await end_task_after(server, lambda: _queue_empty(server), wait_until, 2)
    report = await asyncio.wait_for(second, RUN_TIMEOUT_S)
    # THEN nothing is trained or written again
    assert report.updates == []
    assert report.already_recorded == 1
    assert await server.updates() == [before]


async def test_async_client_skips_superseded_notices_and_trains_on_the_newest(
    stack, server, silo, wait_until
):
    # GIVEN async notices v0, v1, v2 waiting before the client starts
    for version in range(3):
        await server.publish(await server.put_global(version, mode="async"))
    task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    await end_task_after(server, server.updates, wait_until, 2)
    report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN one update based on v2, keyed by client and base version; v0 and v1 deleted
    [item] = await server.updates()
    assert item["sk"] == f"UPDATE#{CLIENT}-b00000002"
    assert item["base_version"] == 2
    assert "round_id" not in item
    assert item["s3_key"] == f"{TASK}/local/{CLIENT}/00000002-{CLIENT}-b00000002.safetensors"
    assert report.superseded == 2
    assert await server.queue_depth() == (0, 0)


async def test_async_client_contributes_an_update_per_new_version(stack, server, silo, wait_until):
    # GIVEN an async task whose "server" publishes v+1 whenever an update on v arrives
    await server.publish(await server.put_global(0, mode="async"))
    task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
    for version in range(1, 4):
        await wait_until(lambda v=version: _count_at_least(server, v), timeout_s=RUN_TIMEOUT_S)
        await server.publish(await server.put_global(version, mode="async"))
    await end_task_after(server, lambda: _count_at_least(server, 4), wait_until, 4)
    report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN the silo contributed one update per version, v0..v3
    assert sorted(u.base_version for u in report.updates) == [0, 1, 2, 3]
    assert len(await server.updates()) == 4


async def _queue_empty(server: Server) -> bool:
    return await server.queue_depth() == (0, 0)


async def _count_at_least(server: Server, n: int) -> bool:
    return len(await server.updates()) >= n


async def test_a_corrupted_global_model_is_refused_after_a_retry(stack, server, silo):
    # GIVEN a notice whose SHA-256 does not match the object in S3
    good = await server.put_global(1)
    await server.publish(good.model_copy(update={"sha256": "0" * 64}))
    # WHEN the client runs
    with capture_logs() as logs, pytest.raises(ChecksumMismatchError) as raised:
        await asyncio.wait_for(
            run_client(config(stack), trainer=NumpyTrainer(), data=silo), RUN_TIMEOUT_S
        )
    # THEN it tried twice, then failed with an error naming the object and the cause
    mismatches = [e for e in logs if e["event"] == "client.download_checksum_mismatch"]
    assert [e["attempt"] for e in mismatches] == [1, 2]
    assert "failed SHA-256 verification 2 times" in str(raised.value)
    assert good.s3_key in str(raised.value)
    # AND nothing was recorded; the message stays, to be delivered again
    assert await server.updates() == []
    assert await server.local_objects() == []
    assert sum(await server.queue_depth()) == 1


async def test_a_message_that_is_no_notice_is_left_for_the_dead_letter_queue(
    stack, server, silo, wait_until
):
    # GIVEN a malformed message and a notice of an unknown schema version in the queue
    sqs = await stack.aws.sqs()
    await sqs.send_message(QueueUrl=server.queue_url, MessageBody="not json")
    future = (await server.put_global(1)).model_dump() | {"schema_version": 99}
    await sqs.send_message(QueueUrl=server.queue_url, MessageBody=json.dumps(future))
    await server.publish(await server.put_global(1))
    # WHEN the client runs to the end of the task
    with capture_logs() as logs:
        task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
        await end_task_after(server, server.updates, wait_until, 1)
        report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN it logged both, did not crash, and did not delete them
    assert report.outcome == "final"
    assert report.rejected_notices >= 2
    rejected = [e for e in logs if e["event"] == "client.notice_rejected"]
    assert any("not valid JSON" in e["error"] for e in rejected)
    assert any("schema_version 99 is not supported" in e["error"] for e in rejected)
    assert sum(await server.queue_depth()) == 2
