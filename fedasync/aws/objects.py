"""S3 port: the models bucket. One implementation for the silo's transfers and the
server's reads and writes alike.

A silo streams its local model up (`upload_file`: multipart, per-part SHA-256, tagged as a
local update) and a global model down (`download_file`: hashed on the way to disk). The
server reads objects whole, bounded in size (`get_bytes`, `iter_objects` with a few reads
in flight) and writes globals with their SHA-256 (`put_bytes`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Protocol

from botocore.exceptions import ClientError

from fedasync.aws import transfer
from fedasync.aws.ranged import Ranged, RangedObject
from fedasync.aws.session import AwsContext, error_code, object_missing
from fedasync.aws.transfer import (
    MISSING,
    PARTS_IN_FLIGHT,
    SHA256_METADATA,
    Advance,
    CorruptDownloadError,
)
from fedasync.core import codec
from fedasync.core.errors import MissingObjectError, PayloadTooLargeError, RegistryError

__all__ = [
    "MISSING",
    "SHA256_METADATA",
    "Advance",
    "CorruptDownloadError",
    "Objects",
    "S3Objects",
]


class Objects(Protocol):
    bucket: str

    async def upload_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        part_size: int,
        on_bytes: Advance | None = None,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        local_update: bool = True,
    ) -> None: ...
    async def ranged(self, key: str, *, named_by_silo: bool = False) -> Ranged: ...
    async def download_file(
        self,
        key: str,
        dest: Path,
        *,
        sha256: str,
        max_bytes: int | None = None,
        on_bytes: Advance | None = None,
    ) -> int: ...
    async def get_bytes(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes: ...
    def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]: ...
    async def put_bytes(self, key: str, data: bytes, sha256: str) -> None: ...
    async def put_bytes_once(self, key: str, data: bytes, sha256: str) -> tuple[bytes, str]: ...


class S3Objects:
    """`Objects` over aioboto3's S3 client, on one bucket."""

    def __init__(self, aws: AwsContext, bucket: str) -> None:
        self._aws = aws
        self.bucket = bucket

    async def upload_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        part_size: int,
        on_bytes: Advance | None = None,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        local_update: bool = True,
    ) -> None:
        """Put `path` at `key` by multipart upload; nothing visible on failure. Tagged as
        a local update (the lifecycle rule expires those) unless `local_update` is False
        (the server's own objects, such as a streamed round's new global, are kept)."""
        s3 = await self._aws.s3()
        extra = {} if local_update else {"tagging": None}
        await transfer.upload_file(
            s3, self.bucket, key, path, sha256=sha256, part_size=part_size,
            on_bytes=on_bytes, parts_in_flight=parts_in_flight, **extra,
        )  # fmt: skip

    async def ranged(self, key: str, *, named_by_silo: bool = False) -> Ranged:
        """The object at `key` opened for ranged GETs (`fedasync.aws.ranged`)."""
        return RangedObject(await self._aws.s3(), self.bucket, key, named_by_silo)

    async def download_file(
        self,
        key: str,
        dest: Path,
        *,
        sha256: str,
        max_bytes: int | None = None,
        on_bytes: Advance | None = None,
    ) -> int:
        """Stream an announced object to `dest`, checked against `sha256`; its size. An
        object that is not there is, to a silo, a wrong one (`CorruptDownloadError`,
        `actual` = `MISSING`): a silo may not list the bucket, so a 403 means missing too."""
        s3 = await self._aws.s3()
        try:
            return await transfer.download_file(
                s3, self.bucket, key, dest, sha256=sha256, max_bytes=max_bytes, on_bytes=on_bytes
            )
        except ClientError as error:
            if not object_missing(error, unlisted=True):
                raise
            raise CorruptDownloadError(
                f"global model {key!r} is missing from bucket {self.bucket!r}",
                key=key,
                expected=sha256,
                actual=MISSING,
            ) from error

    async def get_bytes(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        """The object's bytes. `named_by_silo`: the key comes from an update record, so a
        missing object is the silo's fault (`MissingObjectError`, the update is rejected),
        whether S3 says 404 or, to our role without s3:ListBucket, 403."""
        s3 = await self._aws.s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if object_missing(exc, unlisted=named_by_silo):
                error = MissingObjectError if named_by_silo else RegistryError
                raise error(
                    f"object {key!r} is missing from the model bucket "
                    f"(S3 answered {error_code(exc)})"
                ) from exc
            raise
        size = int(resp.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()
            raise PayloadTooLargeError(f"object {key!r} is {size} bytes; the limit is {max_bytes}")
        async with resp["Body"] as body:
            return bytes(await body.read())

    async def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """The objects at `keys`, in order, with up to `ahead` reads in flight: the reads
        overlap the caller's work on earlier ones, and memory stays bounded. A failed read
        raises at its position. Use with `contextlib.aclosing` when stopping early."""

        def read(key: str) -> asyncio.Future[bytes]:
            return asyncio.ensure_future(
                self.get_bytes(key, max_bytes, named_by_silo=named_by_silo)
            )

        pending: deque[asyncio.Future[bytes]] = deque()
        queue = iter(keys)
        try:
            for key in queue:
                pending.append(read(key))
                if len(pending) >= ahead:
                    break
            while pending:
                data = await pending.popleft()
                following = next(queue, None)
                if following is not None:
                    pending.append(read(following))
                yield data
                del data
        finally:
            for task in pending:
                task.cancel()
            if pending:  # collect them, so no "exception was never retrieved" is left behind
                await asyncio.gather(*pending, return_exceptions=True)

    async def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        """Write a server object (a global, the final model) with its SHA-256."""
        s3 = await self._aws.s3()
        await s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            Metadata={SHA256_METADATA: sha256},
            ContentType="application/octet-stream",
        )

    async def put_bytes_once(self, key: str, data: bytes, sha256: str) -> tuple[bytes, str]:
        """Write a server object only if none is at `key` yet (S3's conditional write,
        `If-None-Match: *`); the bytes and SHA-256 now at `key`: ours, or those an earlier
        try wrote first. A release that is not a pure function of its inputs (central DP's
        noise) must never be written twice: a retry would replace a committed version."""
        s3 = await self._aws.s3()
        try:
            await s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                Metadata={SHA256_METADATA: sha256},
                ContentType="application/octet-stream",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            existing = await self.get_bytes(key)
            return existing, codec.sha256_bytes(existing)
        return data, sha256
