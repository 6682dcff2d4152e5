"""Stopping a silo mid-upload: nothing partial becomes visible, nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.config import MIN_PART_BYTES
from client.data import Dataset
from client.ports import AwsClientPorts
from client.progress import Advance
from client.run import run_client
from client.trainers.base import TrainResult
from fedasync.aws import transfer
from fedasync.core.codec import Weights
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    RUN_TIMEOUT_S,
    Server,
    config,
    server,
    silo,
    stack,
)


class ShiftTrainer:
    """A stand-in for training that keeps the model's size: adds 1 to every weight."""

    name = "shift"

    def init_weights(self, seed: int) -> Weights:
        return {"big": np.zeros(4 * MIN_PART_BYTES // 4 + 17, dtype=np.float32)}

    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        return TrainResult({k: v + 1 for k, v in weights.items()}, len(y), {})

    def evaluate(self, weights: Weights, x: Any, y: Any) -> dict[str, float]:
        return {}


class StalledS3:
    """The real S3 client, except that only part 1 of a multipart upload ever finishes:
    a link that stalls mid-upload, so the stop is certain to find the upload in flight."""

    def __init__(self, s3: Any, part_sent: asyncio.Event) -> None:
        self._s3 = s3
        self._part_sent = part_sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    async def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] > 1:
            await asyncio.Event().wait()  # until cancelled
        sent = await self._s3.upload_part(**kwargs)
        self._part_sent.set()
        return sent


class StallingPorts(AwsClientPorts):
    part_sent: asyncio.Event

    async def upload(self, path: Path, key: str, sha256: str, on_bytes: Advance) -> None:
        s3 = StalledS3(await self._aws.s3(), self.part_sent)
        await transfer.upload_file(
            s3,
            self._cfg.deployment.bucket,
            key,
            path,
            sha256=sha256,
            part_size=self._cfg.part_size,
            on_bytes=on_bytes,
        )


async def test_stopping_mid_upload_leaves_no_object_no_record_and_the_message_returns(
    stack, server: Server, silo: Dataset, wait_until
):
    # GIVEN a 20 MiB model whose multipart upload is in flight (part 1 sent, the rest stalled)
    trainer = ShiftTrainer()
    await server.publish(await server.put_global(1, trainer.init_weights(0)))
    # a lease of 6 s (not 2): the stop, the abort and the 1.5-s heartbeat check below all
    # fit inside the last one even on a loaded machine, so "still in flight" is exact
    cfg = config(stack, part_size=MIN_PART_BYTES, visibility_timeout_s=6)
    ports = StallingPorts(stack.aws, cfg, server.queue_url)
    ports.part_sent = asyncio.Event()
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_client(cfg, trainer=trainer, data=silo, stop_event=stop, ports=ports)
    )
    await asyncio.wait_for(ports.part_sent.wait(), RUN_TIMEOUT_S)
    assert await server.multipart_uploads() != []
    # WHEN the silo is told to stop
    stop.set()
    report = await asyncio.wait_for(run, RUN_TIMEOUT_S)
    # THEN the upload was aborted: no object, no pending upload, no record
    assert report.outcome == "stopped"
    assert report.updates == []
    assert await server.local_objects() == []
    assert await server.multipart_uploads() == []
    assert await server.updates() == []
    # AND heartbeats stopped
    before = await server.records.get("digits", "HEARTBEAT#silo-a")
    await asyncio.sleep(3 * cfg.heartbeat_interval_s)
    assert await server.records.get("digits", "HEARTBEAT#silo-a") == before
    # AND the message, not deleted, becomes visible again after its visibility timeout
    assert await server.queue_depth() == (0, 1)
    await wait_until(lambda: _visible(server), timeout_s=cfg.visibility_timeout_s + 5)


async def _visible(server: Server) -> bool:
    return await server.queue_depth() == (1, 0)


async def test_a_stopped_silo_restarted_delivers_the_update_it_abandoned(
    stack, server: Server, silo: Dataset, wait_until
):
    # GIVEN a silo stopped mid-upload as above
    trainer = ShiftTrainer()
    await server.publish(await server.put_global(1, trainer.init_weights(0)))
    cfg = config(stack, part_size=MIN_PART_BYTES)
    ports = StallingPorts(stack.aws, cfg, server.queue_url)
    ports.part_sent = asyncio.Event()
    stop = asyncio.Event()
    run = asyncio.create_task(
        run_client(cfg, trainer=trainer, data=silo, stop_event=stop, ports=ports)
    )
    await asyncio.wait_for(ports.part_sent.wait(), RUN_TIMEOUT_S)
    stop.set()
    await asyncio.wait_for(run, RUN_TIMEOUT_S)
    # WHEN a new run (with a healthy link) receives the redelivered message
    rerun = asyncio.create_task(run_client(cfg, trainer=trainer, data=silo))
    await wait_until(server.updates, timeout_s=RUN_TIMEOUT_S)
    await server.publish(await server.put_global(1, final=True))
    report = await asyncio.wait_for(rerun, RUN_TIMEOUT_S)
    # THEN the update is delivered exactly once, complete
    [record] = report.updates
    assert len(await server.updates()) == 1
    stored = await server.get_bytes(record.s3_key, record.sha256)
    assert len(stored) == record.size_bytes > 4 * MIN_PART_BYTES


async def test_an_upload_that_fails_is_aborted_and_the_run_reports_the_error(
    stack, server: Server, silo: Dataset
):
    # GIVEN S3 that refuses a part mid-upload
    trainer = ShiftTrainer()
    await server.publish(await server.put_global(1, trainer.init_weights(0)))
    cfg = config(stack, part_size=MIN_PART_BYTES)

    class BrokenS3(StalledS3):
        async def upload_part(self, **kwargs: Any) -> Any:
            if kwargs["PartNumber"] == 2:
                raise ConnectionResetError("link dropped")
            return await self._s3.upload_part(**kwargs)

    class BrokenPorts(AwsClientPorts):
        async def upload(self, path: Path, key: str, sha256: str, on_bytes: Advance) -> None:
            s3 = BrokenS3(await self._aws.s3(), asyncio.Event())
            await transfer.upload_file(
                s3,
                self._cfg.deployment.bucket,
                key,
                path,
                sha256=sha256,
                part_size=self._cfg.part_size,
                on_bytes=on_bytes,
            )

    ports = BrokenPorts(stack.aws, cfg, server.queue_url)
    # WHEN the client runs
    with pytest.raises(ConnectionResetError, match="link dropped"):
        await asyncio.wait_for(
            run_client(cfg, trainer=trainer, data=silo, ports=ports), RUN_TIMEOUT_S
        )
    # THEN nothing partial is left and the message is still there for a retry
    assert await server.local_objects() == []
    assert await server.multipart_uploads() == []
    assert await server.updates() == []
    assert sum(await server.queue_depth()) == 1
