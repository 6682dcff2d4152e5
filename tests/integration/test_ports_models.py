"""Contract of the S3 model registry, against moto over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import fedasync.aws.models as models
from fedasync.aws.models import S3ModelRegistry, StoredObject, final_key, global_key, local_key
from fedasync.aws.session import AwsContext
from fedasync.core.errors import ChecksumMismatchError, RegistryError


@pytest.fixture
async def registry(aws: AwsContext, prefix: str) -> S3ModelRegistry:
    bucket = f"{prefix}-models"
    await (await aws.s3()).create_bucket(Bucket=bucket)
    return S3ModelRegistry(aws, bucket)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def big_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def uploads_in_progress(aws: AwsContext, bucket: str) -> list[Any]:
    listed = await (await aws.s3()).list_multipart_uploads(Bucket=bucket)
    return list(listed.get("Uploads", []))


def test_keys_follow_the_design_layout() -> None:
    assert global_key("digits", 3) == "digits/global/00000003.safetensors"
    assert local_key("digits", "bank-1", 2, "u1") == "digits/local/bank-1/00000002-u1.safetensors"
    assert final_key("digits") == "digits/final.safetensors"


async def test_bytes_round_trip_with_recorded_sha256(registry: S3ModelRegistry) -> None:
    # GIVEN bytes stored under a key
    stored = await registry.put_bytes("t/global/00000000.safetensors", b"weights")
    # WHEN read back and described
    data = await registry.get_bytes("t/global/00000000.safetensors")
    head = await registry.head("t/global/00000000.safetensors")
    # THEN the same bytes come back and the SHA-256 travels with the object
    assert data == b"weights"
    assert stored == StoredObject("t/global/00000000.safetensors", sha(b"weights"), 7)
    assert head == StoredObject("t/global/00000000.safetensors", sha(b"weights"), 7, created=False)


async def test_missing_object_is_a_registry_error_naming_key_and_bucket(
    registry: S3ModelRegistry,
) -> None:
    assert await registry.head("t/none") is None
    assert not await registry.exists("t/none")
    with pytest.raises(RegistryError, match=r"'t/none' is missing from bucket"):
        await registry.get_bytes("t/none")


async def test_tampered_object_fails_its_checksum(
    aws: AwsContext, registry: S3ModelRegistry, tmp_path: Path
) -> None:
    # GIVEN an object whose recorded SHA-256 is not that of its bytes
    await (await aws.s3()).put_object(
        Bucket=registry.bucket, Key="t/bad", Body=b"evil", Metadata={"sha256": sha(b"good")}
    )
    # WHEN it is read to memory or to a file THEN the mismatch is an error, and no file appears
    with pytest.raises(ChecksumMismatchError, match=sha(b"good")):
        await registry.get_bytes("t/bad")
    with pytest.raises(ChecksumMismatchError):
        await registry.get_file("t/bad", tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


async def test_an_expected_sha256_overrides_the_recorded_one(registry: S3ModelRegistry) -> None:
    await registry.put_bytes("t/k", b"v1")
    with pytest.raises(ChecksumMismatchError):
        await registry.get_bytes("t/k", sha256=sha(b"v2"))


async def test_conditional_create_keeps_the_first_object(registry: S3ModelRegistry) -> None:
    # GIVEN version 1 already written
    await registry.put_bytes("t/global/00000001.safetensors", b"first", if_absent=True)
    # WHEN a redelivered event writes it again with other bytes
    again = await registry.put_bytes("t/global/00000001.safetensors", b"second", if_absent=True)
    # THEN nothing is overwritten and the caller learns what is there
    assert again == StoredObject("t/global/00000001.safetensors", sha(b"first"), 5, created=False)
    assert await registry.get_bytes("t/global/00000001.safetensors") == b"first"


async def test_large_file_streams_up_in_parts_and_back_to_a_file(
    aws: AwsContext, registry: S3ModelRegistry, tmp_path: Path
) -> None:
    # GIVEN a 17 MiB file (three 8 MiB parts)
    data = big_file(tmp_path / "local.safetensors", 17 * 1024 * 1024)
    # WHEN it is uploaded and downloaded to another file
    stored = await registry.put_file(
        "t/local/a/00000000-u.safetensors", tmp_path / "local.safetensors"
    )
    fetched = await registry.get_file("t/local/a/00000000-u.safetensors", tmp_path / "copy")
    # THEN both sides agree on the SHA-256, the copy is identical, no upload is left open
    assert stored.sha256 == fetched.sha256 == sha(data)
    assert (tmp_path / "copy").read_bytes() == data
    assert await uploads_in_progress(aws, registry.bucket) == []


async def test_multipart_conditional_create_on_existing_object(
    aws: AwsContext, registry: S3ModelRegistry, tmp_path: Path
) -> None:
    await registry.put_bytes("t/final.safetensors", b"final", if_absent=True)
    big_file(tmp_path / "big", 9 * 1024 * 1024)
    again = await registry.put_file("t/final.safetensors", tmp_path / "big", if_absent=True)
    assert (again.created, again.sha256) == (False, sha(b"final"))
    assert await uploads_in_progress(aws, registry.bucket) == []


async def test_cancelled_upload_is_aborted_and_leaves_no_object(
    aws: AwsContext, registry: S3ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an upload whose second part read blocks (a slow disk, a SIGTERM on its way)
    big_file(tmp_path / "big", 17 * 1024 * 1024)
    reads, release = [], threading.Event()
    real_read = models._read_part

    def slow_read(source: Any, size: int) -> bytes:
        reads.append(size)
        if len(reads) == 2:
            release.wait(10)
        return real_read(source, size)

    monkeypatch.setattr(models, "_read_part", slow_read)
    upload = asyncio.create_task(registry.put_file("t/partial", tmp_path / "big"))
    while len(reads) < 2:
        await asyncio.sleep(0.01)
    # WHEN the upload is cancelled mid-way
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    release.set()
    # THEN the multipart upload is aborted and no object (not even a partial one) exists
    assert await uploads_in_progress(aws, registry.bucket) == []
    assert not await registry.exists("t/partial")
