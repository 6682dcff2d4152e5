"""Everything the client asks of AWS, in its own words, over the `fedasync.aws` ports
(the same ones the server uses).

The loops depend on `ClientPorts` only; `AwsClientPorts` binds it to one `AwsContext`
(one aioboto3 session, one pooled client per service) and to the stack's resources.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from botocore.exceptions import ClientError

from client.config import ClientConfig
from client.progress import Advance
from fedasync.aws.objects import S3Objects
from fedasync.aws.queues import ReceivedMessage, SqsQueues
from fedasync.aws.records import DynamoRecords
from fedasync.aws.session import AwsContext, error_code
from fedasync.core.errors import RegistryError
from fedasync.core.messages import Heartbeat, UpdateRecord
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY


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
        self._records = DynamoRecords(aws, cfg.deployment.table)
        self._objects = S3Objects(aws, cfg.deployment.bucket)

    @classmethod
    async def open(cls, aws: AwsContext, cfg: ClientConfig) -> AwsClientPorts:
        """Find the client's queue by name unless its URL was given."""
        url = cfg.queue_url
        if url is None:
            try:
                url = await SqsQueues(aws).url_of(cfg.queue_name)
                why = "it does not exist"
            except ClientError as error:
                why = error_code(error)
            if url is None:
                raise RegistryError(
                    f"client {cfg.client_id!r} has no queue {cfg.queue_name!r} ({why}); "
                    f"is it listed in the stack (prefix {cfg.deployment.prefix!r})?"
                )
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
        return await self._objects.download_file(
            key, dest, sha256=sha256, max_bytes=self._cfg.max_model_bytes, on_bytes=on_bytes
        )

    async def upload(self, path: Path, key: str, sha256: str, on_bytes: Advance) -> None:
        await self._objects.upload_file(
            key, path, sha256=sha256, part_size=self._cfg.part_size, on_bytes=on_bytes
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
        item = {**record.model_dump(exclude_none=True), TABLE_PARTITION_KEY: record.task_name,
                TABLE_SORT_KEY: record.sk}  # fmt: skip
        return await self._records.put(
            item,
            condition=f"attribute_not_exists({TABLE_SORT_KEY}) OR #sha256 <> :mine",
            values={":mine": record.sha256},
        )

    async def put_heartbeat(self, heartbeat: Heartbeat) -> None:
        item = {**heartbeat.model_dump(exclude_none=True), TABLE_PARTITION_KEY: heartbeat.task_name,
                TABLE_SORT_KEY: heartbeat.sk}  # fmt: skip
        await self._records.put(item)
