"""Model transfers that never hold a whole model in memory.

Upload: a multipart upload read from disk one part at a time, a few parts in flight,
each part with its own SHA-256 checksum that S3 verifies on receipt; any error or
cancellation aborts the upload, so no partial object ever becomes visible.
Download: streamed to a temporary file while hashing; the file only takes its final
name once its SHA-256 matches the one announced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from fedasync.core.errors import ChecksumMismatchError, PayloadTooLargeError
from fedasync.resources import LOCAL_UPDATE_TAGGING

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger()

# Every stored model carries its SHA-256 as `x-amz-meta-sha256`: S3 keeps no plain SHA-256
# of a multipart object, and readers re-hash what they read against it.
SHA256_METADATA = "sha256"
Advance = Callable[[int], None]  # told each chunk's size as bytes move (progress bars)
PARTS_IN_FLIGHT = 4
_WRITE_BATCH = 4 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


MISSING = "missing"  # the `actual` of an announced object that is not in the bucket


class CorruptDownloadError(ChecksumMismatchError):
    """A downloaded object's SHA-256 is not the one announced (both kept, for the log), or
    the object is not there at all (`actual` is `MISSING`)."""

    def __init__(self, message: str, *, key: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.key, self.expected, self.actual = key, expected, actual


def _ignore(_: int) -> None:
    return None


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _read_part(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


async def upload_file(
    s3: S3Client,
    bucket: str,
    key: str,
    path: Path,
    *,
    sha256: str,
    part_size: int,
    on_bytes: Advance | None = None,
    parts_in_flight: int = PARTS_IN_FLIGHT,
    tagging: str | None = LOCAL_UPDATE_TAGGING,
) -> None:
    """Put `path` at `key` with its SHA-256 in the metadata; nothing visible on failure.

    A silo's object is tagged as a local update (`LOCAL_UPDATE_TAGGING`): the bucket's
    lifecycle rule expires local updates by that tag, and by nothing else. The server's
    (a streamed round's new global) passes `tagging=None`: it is kept."""
    size = await asyncio.to_thread(os.path.getsize, path)
    advance = on_bytes or _ignore
    metadata = {SHA256_METADATA: sha256}
    tags: dict[str, Any] = {"Tagging": tagging} if tagging else {}
    if size <= part_size:  # one part is already bounded by part_size: a plain put
        body = await asyncio.to_thread(_read_part, path, 0, size)
        await s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            Metadata=metadata,
            ChecksumSHA256=_b64_sha256(body),
            **tags,
        )
        advance(size)
        return
    created = await s3.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        Metadata=metadata,
        ChecksumAlgorithm="SHA256",
        **tags,
    )
    upload = _Multipart(s3, bucket, key, created["UploadId"], advance)
    try:
        parts = await upload.send(path, size, part_size, parts_in_flight)
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload.upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        await _abort(s3, bucket, key, upload.upload_id)
        raise


class _Multipart:
    """The parts of one multipart upload, read from disk and sent a few at a time."""

    def __init__(
        self, s3: S3Client, bucket: str, key: str, upload_id: str, advance: Advance
    ) -> None:
        self.s3, self.bucket, self.key, self.upload_id = s3, bucket, key, upload_id
        self._advance = advance

    async def send(self, path: Path, size: int, part_size: int, parts_in_flight: int) -> list[Any]:
        offsets = range(0, size, part_size)
        parts: list[Any] = [None] * len(offsets)
        slots = asyncio.Semaphore(parts_in_flight)

        async def one(index: int, offset: int) -> None:
            async with slots:  # bounds memory: at most parts_in_flight parts read at once
                body = await asyncio.to_thread(_read_part, path, offset, part_size)
                parts[index] = await self._part(index + 1, body)

        async with asyncio.TaskGroup() as group:
            for index, offset in enumerate(offsets):
                group.create_task(one(index, offset))
        return parts

    async def _part(self, number: int, body: bytes) -> dict[str, Any]:
        checksum = _b64_sha256(body)  # S3 rejects the part if its bytes hash otherwise
        sent = await self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumSHA256=checksum,
        )
        self._advance(len(body))
        return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum}


async def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
    # shielded: the abort must reach S3 even though our own task is being cancelled
    abort = asyncio.ensure_future(
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    )
    try:
        await asyncio.shield(abort)
        log.info("client.upload_aborted", s3_key=key)
    except Exception as exc:  # the lifecycle rule collects what we could not abort
        log.warning("client.upload_abort_failed", s3_key=key, error=str(exc))


async def download_file(
    s3: S3Client,
    bucket: str,
    key: str,
    dest: Path,
    *,
    sha256: str,
    max_bytes: int | None = None,
    on_bytes: Advance | None = None,
) -> int:
    """Stream `key` to `dest` verifying SHA-256; returns its size. Mismatch: no `dest`."""
    response = await s3.get_object(Bucket=bucket, Key=key)
    size = int(response["ContentLength"])
    if max_bytes is not None and size > max_bytes:
        async with response["Body"]:  # hand the connection back unread
            pass
        raise PayloadTooLargeError(
            f"global model {key!r} is {size} bytes; the limit is {max_bytes}"
        )
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        fh = await asyncio.to_thread(open, partial, "wb")
        try:
            await _stream_to(response["Body"], fh, digest, on_bytes)
        finally:
            await asyncio.to_thread(fh.close)
        got = digest.hexdigest()
        if got != sha256:
            raise CorruptDownloadError(
                f"global model {key!r} has SHA-256 {got}; the notice announced {sha256}",
                key=key,
                expected=sha256,
                actual=got,
            )
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return size


async def _stream_to(body: Any, fh: Any, digest: Any, on_bytes: Advance | None) -> None:
    batch: list[bytes] = []
    pending = 0

    def flush(chunks: list[bytes]) -> None:
        for chunk in chunks:
            digest.update(chunk)
            fh.write(chunk)

    async with body:  # releases the connection even if the stream breaks
        async for chunk in body.iter_chunks(_READ_CHUNK):
            batch.append(chunk)
            pending += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            if pending >= _WRITE_BATCH:  # hash and write off the loop, a few MiB at a time
                await asyncio.to_thread(flush, batch)
                batch, pending = [], 0
    await asyncio.to_thread(flush, batch)
