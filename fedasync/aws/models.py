"""S3 port: the model registry. Every object carries its SHA-256, checked on every read.

moto accepts a wrong `ChecksumSHA256` on put, and a multipart object has no plain
SHA-256 of its own, so the registry never trusts the store: it records the digest in
`x-amz-meta-sha256` and re-hashes what it reads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code
from fedasync.core.errors import ChecksumMismatchError, RegistryError

# The key layout lives in the core, shared with the handlers and the client.
from fedasync.core.keys import buffer_key, final_key, global_key, local_key

__all__ = [
    "ModelRegistry",
    "S3ModelRegistry",
    "StoredObject",
    "buffer_key",
    "final_key",
    "global_key",
    "local_key",
]

log = structlog.get_logger()

SHA256_METADATA = "sha256"  # sent as x-amz-meta-sha256
PART_SIZE = 8 * 1024 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# AWS answers a lost IfNoneMatch race with 409; both mean "someone else created it"
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size_bytes: int
    created: bool = True  # False: an `if_absent` write found the object already there


class ModelRegistry(Protocol):
    async def put_bytes(
        self, key: str, data: bytes, *, if_absent: bool = False
    ) -> StoredObject: ...
    async def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, sha256: str | None = None
    ) -> StoredObject: ...
    async def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes: ...
    async def get_file(
        self, key: str, path: Path, *, sha256: str | None = None
    ) -> StoredObject: ...
    async def head(self, key: str) -> StoredObject | None: ...
    async def exists(self, key: str) -> bool: ...


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read_part(source: BinaryIO, size: int) -> bytes:
    return source.read(size)


class S3ModelRegistry:
    """`ModelRegistry` over aioboto3's S3 client, on one bucket."""

    def __init__(self, aws: AwsContext, bucket: str, *, part_size: int = PART_SIZE) -> None:
        self._aws = aws
        self.bucket = bucket
        self._part_size = part_size

    async def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> StoredObject:
        digest = hashlib.sha256(data).digest()
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        s3 = await self._aws.s3()
        try:
            await s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                Metadata={SHA256_METADATA: digest.hex()},
                ChecksumSHA256=base64.b64encode(digest).decode(),  # AWS checks it in transit
                **extra,
            )
        except ClientError as error:
            return await self._existing(key, error)
        log.info("registry.put", key=key, size_bytes=len(data))
        return StoredObject(key, digest.hex(), len(data))

    async def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, sha256: str | None = None
    ) -> StoredObject:
        """Upload a file; above one part, a multipart upload reading one part at a time.

        Any error or cancellation aborts the upload, so no partial object appears.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= self._part_size:
            data = await asyncio.to_thread(path.read_bytes)
            return await self.put_bytes(key, data, if_absent=if_absent)
        digest: str = sha256 if sha256 else await asyncio.to_thread(_file_sha256, path)
        s3 = await self._aws.s3()
        upload = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata={SHA256_METADATA: digest}
        )
        upload_id = upload["UploadId"]
        try:
            parts = await self._upload_parts(key, upload_id, path)
            extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException as error:
            await asyncio.shield(self._abort(key, upload_id))
            if isinstance(error, ClientError) and error_code(error) in _EXISTS_CODES:
                return await self._existing(key, error)
            raise
        log.info("registry.put", key=key, size_bytes=size, parts=len(parts))
        return StoredObject(key, digest, size)

    async def _upload_parts(self, key: str, upload_id: str, path: Path) -> list[Any]:
        s3 = await self._aws.s3()
        parts: list[Any] = []
        source = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(_read_part, source, self._part_size):
                number = len(parts) + 1
                sent = await s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        finally:
            await asyncio.to_thread(source.close)
        return parts

    async def _abort(self, key: str, upload_id: str) -> None:
        s3 = await self._aws.s3()
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as error:  # the upload may be gone already; nothing to leak
            log.warning("registry.abort_failed", key=key, code=error_code(error))
        log.info("registry.upload_aborted", key=key)

    async def _existing(self, key: str, error: ClientError) -> StoredObject:
        """A conditional create lost to an existing object: describe that object."""
        if error_code(error) not in _EXISTS_CODES:
            raise error
        current = await self.head(key)
        if current is None:  # created and deleted in between: report the conflict as is
            raise error
        log.info("registry.already_exists", key=key)
        return StoredObject(key, current.sha256, current.size_bytes, created=False)

    async def head(self, key: str) -> StoredObject | None:
        s3 = await self._aws.s3()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error_code(error) in _MISSING_CODES:
                return None
            raise
        sha = head.get("Metadata", {}).get(SHA256_METADATA, "")
        return StoredObject(key, sha, head["ContentLength"], created=False)

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """The object's bytes, checked against `sha256` (default: its recorded SHA-256)."""
        body, recorded = await self._open(key)
        async with body:  # releases the connection even if reading fails
            data = await body.read()
        self._verify(key, hashlib.sha256(data).hexdigest(), sha256 or recorded)
        return bytes(data)

    async def get_file(self, key: str, path: Path, *, sha256: str | None = None) -> StoredObject:
        """Stream the object to `path`; it appears there only once its SHA-256 checks out."""
        body, recorded = await self._open(key)
        partial = path.with_name(path.name + ".partial")
        digest, size = hashlib.sha256(), 0
        target = await asyncio.to_thread(partial.open, "wb")
        try:
            async with body:
                async for chunk in body.iter_chunks(1024 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(target.write, chunk)
            await asyncio.to_thread(target.close)
            self._verify(key, digest.hexdigest(), sha256 or recorded)
            await asyncio.to_thread(partial.replace, path)
        except BaseException:
            await asyncio.to_thread(target.close)
            await asyncio.to_thread(partial.unlink, True)
            raise
        return StoredObject(key, digest.hexdigest(), size, created=False)

    async def _open(self, key: str) -> tuple[Any, str]:
        s3 = await self._aws.s3()
        try:
            got = await s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error_code(error) in _MISSING_CODES:
                raise RegistryError(
                    f"model object {key!r} is missing from bucket {self.bucket!r}", reason="missing"
                ) from error
            raise
        return got["Body"], got.get("Metadata", {}).get(SHA256_METADATA, "")

    def _verify(self, key: str, actual: str, expected: str) -> None:
        if not expected:
            raise RegistryError(
                f"model object {key!r} in bucket {self.bucket!r} has no recorded SHA-256; "
                "write it through the registry",
                reason="no_checksum",
            )
        if actual != expected:
            raise ChecksumMismatchError(
                f"model object {key!r} in bucket {self.bucket!r} has SHA-256 {actual}; "
                f"expected {expected}"
            )
