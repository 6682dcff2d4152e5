"""Everything the client asks of AWS, in its own words, over the `fedasync.aws` ports.

The loops depend on `ClientPorts` only; `AwsClientPorts` binds it to one `AwsContext`
(one aioboto3 session, one pooled client per service) and to the stack's resources.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from botocore.exceptions import ClientError

from client import transfer
from client.config import ClientConfig
from client.progress import Advance
from client.transfer import MISSING, CorruptDownloadError
from fedasync.aws.queues import ReceivedMessage, SqsQueues
from fedasync.aws.records import DynamoRecords, Put
from fedasync.aws.session import AwsContext, error_code, object_missing
from fedasync.core.errors import RegistryError
from fedasync.core.messages import Heartbeat, UpdateRecord


class ClientPorts(Protocol):
    async def receive(self) -> list[ReceivedMessage]: ...
    async def extend(self, receipts: Sequence[str]) -> None: ...
    async def postpone(self, receipts: Sequence[str], delay_s: int) -> None: ...
    async def delete(self, receipts: Sequence[str]) -> None: ...
    async def download(self, key: str, sha256: str, dest: Path, on_bytes: Advance) -> int: ...
    async def upload(self, path: Path, key: str, sha256: str, on_bytes: Advance) -> None: ...
    async def update_exists(self, task_name: str, sk: str, s3_key: str) -> bool: ...
    async def put_update(self, record: UpdateRecord) -> bool: ...
    async def put_heartbeat(self, heartbeat: Heartbeat) -> None: ...


class AwsClientPorts:
    """`ClientPorts` on SQS (own queue), S3 (model bucket) and DynamoDB (task table)."""

    def __init__(self, aws: AwsContext, cfg: ClientConfig, queue_url: str) -> None:
        self._aws = aws
        self._cfg = cfg
        self.queue_url = queue_url
        self._queues = SqsQueues(aws)
        self._records = DynamoRecords(aws, cfg.table_name)

    @classmethod
    async def open(cls, aws: AwsContext, cfg: ClientConfig) -> AwsClientPorts:
        """Find the client's queue by name unless its URL was given."""
        url = cfg.queue_url
        if url is None:
            sqs = await aws.sqs()
            try:
                url = (await sqs.get_queue_url(QueueName=cfg.queue_name))["QueueUrl"]
            except ClientError as error:
                raise RegistryError(
                    f"client {cfg.client_id!r} has no queue {cfg.queue_name!r} "
                    f"({error_code(error)}); is it listed in the stack (prefix {cfg.prefix!r})?"
                ) from error
        return cls(aws, cfg, url)

    async def receive(self) -> list[ReceivedMessage]:
        return await self._queues.receive(
            self.queue_url,
            max_messages=10,
            wait_s=self._cfg.wait_time_s,
            visibility_s=self._cfg.visibility_timeout_s,
        )

    async def extend(self, receipts: Sequence[str]) -> None:
        await asyncio.gather(
            *(
                self._queues.change_visibility(self.queue_url, r, self._cfg.visibility_timeout_s)
                for r in receipts
            )
        )

    async def postpone(self, receipts: Sequence[str], delay_s: int) -> None:
        """Let the messages come back in `delay_s` seconds (not at once, not never)."""
        await asyncio.gather(
            *(self._queues.change_visibility(self.queue_url, r, delay_s) for r in receipts)
        )

    async def delete(self, receipts: Sequence[str]) -> None:
        await asyncio.gather(*(self._queues.delete(self.queue_url, r) for r in receipts))

    async def download(self, key: str, sha256: str, dest: Path, on_bytes: Advance) -> int:
        s3 = await self._aws.s3()
        try:
            return await transfer.download_file(
                s3,
                self._cfg.bucket_name,
                key,
                dest,
                sha256=sha256,
                max_bytes=self._cfg.max_model_bytes,
                on_bytes=on_bytes,
            )
        except ClientError as error:
            # the notice named it; a silo may not list the bucket, so 403 means missing too
            if not object_missing(error, unlisted=True):
                raise
            # the announced object is not there: for the silo the same as a wrong one (the
            # notice is given back and comes again), never a reason to exit
            raise CorruptDownloadError(
                f"global model {key!r} is missing from bucket {self._cfg.bucket_name!r}",
                key=key,
                expected=sha256,
                actual=MISSING,
            ) from error

    async def upload(self, path: Path, key: str, sha256: str, on_bytes: Advance) -> None:
        s3 = await self._aws.s3()
        await transfer.upload_file(
            s3,
            self._cfg.bucket_name,
            key,
            path,
            sha256=sha256,
            part_size=self._cfg.part_size,
            on_bytes=on_bytes,
        )

    async def update_exists(self, task_name: str, sk: str, s3_key: str) -> bool:
        """Whether this silo's record is under `sk`: an item there that names another
        object is not ours (a squatter's, say), and does not stop us (see `put_update`)."""
        return await self._records.recorded_as(task_name, sk, "s3_key", s3_key)

    async def put_update(self, record: UpdateRecord) -> bool:
        """Write the record once; False if it already existed (a retry or a duplicate).

        An item under the key with another SHA-256 is not this record: it is written over
        (IAM cannot bind a sort key to its writer, so another silo may have put junk
        there; the server decides the new item as a new submission)."""
        fields = record.model_dump(exclude_none=True)
        put = Put(record.task_name, record.sk, fields, if_absent=True, unless_same="sha256")
        outcome = await self._records.put(put)
        return outcome.applied

    async def put_heartbeat(self, heartbeat: Heartbeat) -> None:
        fields = heartbeat.model_dump(exclude_none=True)
        await self._records.put(Put(heartbeat.task_name, heartbeat.sk, fields, if_absent=False))
