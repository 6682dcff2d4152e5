"""The silo client against the embedded stack over HTTP, the test playing the server.

The test uploads global models, publishes notices on the real SNS topic (fanned out to
the client's SQS queue by its filter policy) and reads what the client leaves behind in
S3, DynamoDB and SQS. No server handlers run here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from client.config import ClientConfig
from client.data import Dataset, demo_silo, hold_out
from client.run import run_client
from client.trainers import TrainResult, get_trainer
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.aws.notices import SnsNotices
from fedasync.aws.objects import S3Objects
from fedasync.aws.records import DynamoRecords
from fedasync.core import codec, keys
from fedasync.core.messages import GlobalModelNotice, UpdateRecord
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec

TASK = "digits"
CLIENT = "silo-a"
RUN_TIMEOUT_S = 25


@pytest.fixture
async def stack(moto_server, prefix) -> AsyncIterator[EmbeddedStack]:
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id=CLIENT),))
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
        self.registry = S3Objects(stack.aws, stack.endpoints.bucket)
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
        blob = codec.encode(weights)
        await self.put_bytes(key, blob)
        return GlobalModelNotice(
            task_name=TASK,
            mode=mode,
            version=version,
            round_id=version if mode == "sync" and not final else None,
            s3_key=key,
            sha256=hashlib.sha256(blob).hexdigest(),
            size_bytes=len(blob),
            final=final,
        )

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.registry.put_bytes(key, data, hashlib.sha256(data).hexdigest())

    async def get_bytes(self, key: str, sha256: str) -> bytes:
        """The object, checked against the SHA-256 it was announced with."""
        data = await self.registry.get_bytes(key)
        assert hashlib.sha256(data).hexdigest() == sha256
        return data

    async def publish(self, notice: GlobalModelNotice) -> None:
        e = self.stack.endpoints
        await SnsNotices(self.stack.aws, e.topic_arn, e.topic_shards).publish(notice, (CLIENT,))

    async def updates(self) -> list[dict[str, Any]]:
        return await self.records.query_prefix(TASK, keys.UPDATE_PREFIX)

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
    data = await server.get_bytes(record.s3_key, record.sha256)
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


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_a_corrupted_global_model_is_given_back_and_trained_once_repaired(
    stack, server, silo, wait_until
):
    # GIVEN a notice for v1 whose object in S3 is not the model it announces
    notice = await server.put_global(1)
    good = await server.get_bytes(notice.s3_key, notice.sha256)
    bad = codec.encode(NumpyTrainer().init_weights(seed=99))
    await server.put_bytes(notice.s3_key, bad)
    await server.publish(notice)
    with capture_logs() as logs:
        # WHEN the client runs and finds the checksum wrong
        task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
        await wait_until(lambda: _events(logs, "client.download_corrupt"), timeout_s=RUN_TIMEOUT_S)
        # THEN it is still running, nothing was trained, and the notice was not deleted
        assert not task.done()
        assert await server.updates() == []
        assert sum(await server.queue_depth()) == 1
        # WHEN the object is repaired THEN the redelivered notice is trained on
        await server.put_bytes(notice.s3_key, good)
        await end_task_after(server, server.updates, wait_until, 1)
        report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    [corrupt] = _events(logs, "client.download_corrupt")
    assert corrupt["log_level"] == "warning"
    assert (corrupt["notice_version"], corrupt["s3_key"]) == (1, notice.s3_key)
    assert corrupt["expected_sha256"] == notice.sha256[:12]
    assert corrupt["actual_sha256"] == codec.sha256_bytes(bad)[:12]
    assert (corrupt["failures"], corrupt["retry_in_s"]) == (1, 2)  # the visibility timeout
    assert report.outcome == "final"
    assert report.corrupt_downloads == 1
    [item] = await server.updates()
    assert (item["base_version"], item["num_examples"]) == (1, len(silo))
    assert await server.queue_depth() == (0, 0)


async def test_a_missing_global_model_is_given_back_and_trained_once_it_is_there(
    stack, server, silo, wait_until
):
    # GIVEN a notice for v1 whose object is not (yet, or no longer) in the bucket
    notice = await server.put_global(1)
    good = await server.get_bytes(notice.s3_key, notice.sha256)
    s3 = await stack.aws.s3()
    await s3.delete_object(Bucket=stack.endpoints.bucket, Key=notice.s3_key)
    await server.publish(notice)
    with capture_logs() as logs:
        # WHEN the client runs and cannot find it
        task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
        await wait_until(lambda: _events(logs, "client.download_corrupt"), timeout_s=RUN_TIMEOUT_S)
        # THEN it keeps running, trained nothing, and kept the notice
        assert not task.done()
        assert await server.updates() == []
        assert sum(await server.queue_depth()) == 1
        # WHEN the object is put back THEN the redelivered notice is trained on
        await server.put_bytes(notice.s3_key, good)
        await end_task_after(server, server.updates, wait_until, 1)
        report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    [missing] = _events(logs, "client.download_corrupt")
    assert (missing["s3_key"], missing["actual_sha256"]) == (notice.s3_key, "missing")
    assert report.outcome == "final" and report.corrupt_downloads == 1
    [item] = await server.updates()
    assert item["base_version"] == 1


async def test_a_model_corrupt_for_good_is_retried_ever_more_slowly_and_a_newer_one_served(
    stack, server, silo, wait_until
):
    # GIVEN a notice for v1 that announces a SHA-256 no object has
    v1 = await server.put_global(1)
    await server.publish(v1.model_copy(update={"sha256": "0" * 64}))
    with capture_logs() as logs:
        task = asyncio.create_task(run_client(config(stack), trainer=NumpyTrainer(), data=silo))
        # WHEN it has failed twice
        await wait_until(
            lambda: len(_events(logs, "client.download_corrupt")) >= 2, timeout_s=RUN_TIMEOUT_S
        )
        await asyncio.sleep(2)
        # THEN it waited the visibility timeout (2 s), then twice that: no hot loop
        corrupt = _events(logs, "client.download_corrupt")
        assert [(e["failures"], e["retry_in_s"]) for e in corrupt] == [(1, 2), (2, 4)]
        assert [e["attempt"] for e in _events(logs, "client.download_checksum_mismatch")] == [
            1,
            2,
        ] * 2
        # WHEN the server announces v2 THEN the client, still polling, trains on it
        await server.publish(await server.put_global(2))
        await end_task_after(server, server.updates, wait_until, 2)
        report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    assert report.outcome == "final"
    assert [u.base_version for u in report.updates] == [2]
    assert report.corrupt_downloads == 2


class _NonFiniteMetrics(NumpyTrainer):
    def fit(self, weights, x, y, *, epochs, seed):
        result = super().fit(weights, x, y, epochs=epochs, seed=seed)
        spoiled = {**result.metrics, "train_loss": float("nan"), "train_grad": float("inf")}
        return TrainResult(result.weights, result.num_examples, spoiled)


async def test_non_finite_metrics_are_dropped_with_a_warning_and_the_update_submitted(
    stack, server, silo, wait_until
):
    # GIVEN a trainer whose loss comes out NaN (and another metric Inf)
    await server.publish(await server.put_global(1))
    with capture_logs() as logs:
        # WHEN the client trains on a notice
        task = asyncio.create_task(
            run_client(config(stack), trainer=_NonFiniteMetrics(), data=silo)
        )
        await end_task_after(server, server.updates, wait_until, 1)
        report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN each bad metric is named in a warning, and the update is recorded without them
    dropped = _events(logs, "client.metric_dropped")
    assert sorted(e["metric"] for e in dropped) == ["train_grad", "train_loss"]
    assert {e["log_level"] for e in dropped} == {"warning"}
    assert report.outcome == "final"
    [item] = await server.updates()
    assert set(item["metrics"]) == {"train_accuracy"}


def _scores_by_hand(weights: codec.Weights, data: Dataset) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of softmax(x W + b), written out here."""
    logits = data.x.astype(np.float64) @ weights["dense/kernel"].astype(np.float64)
    logits += weights["dense/bias"].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    picked = log_probs[np.arange(len(data)), data.y]
    return float(np.mean(np.argmax(logits, axis=1) == data.y)), float(-np.mean(picked))


@pytest.mark.parametrize("trainer_name", ["numpy", "keras"])
async def test_a_silo_scores_the_global_model_it_receives_on_its_held_out_data(
    stack, server, silo, wait_until, trainer_name
):
    if trainer_name == "keras":
        pytest.importorskip("tensorflow")
    # GIVEN a silo holding out a fifth of its data, and global v1 announced
    train_part, held = hold_out(silo, 0.2, seed=0)
    assert held is not None
    v1 = NumpyTrainer().init_weights(seed=1)
    await server.publish(await server.put_global(1, v1))
    # WHEN it trains on v1
    trainer = get_trainer(trainer_name)
    task = asyncio.create_task(
        run_client(config(stack), trainer=trainer, data=train_part, eval_data=held)
    )
    await end_task_after(server, server.updates, wait_until, 1)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN its record carries eval_* scores of v1 on the held-out part, besides train_*
    [item] = await server.updates()
    accuracy, loss = _scores_by_hand(v1, held)
    metrics = item["metrics"]
    assert {"eval_accuracy", "eval_loss", "train_accuracy", "train_loss"} <= set(metrics)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)
    # AND it trained on the rest only
    assert item["num_examples"] == len(train_part) < len(silo)


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
