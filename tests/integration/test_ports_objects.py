"""Contract of the S3 objects port (the silo's transfers, the server's reads and writes):
the aioboto3 implementation against moto over HTTP, and the in-memory one the server's
unit tier runs on, held to the same tests (those about S3's multipart uploads and object
metadata are the aioboto3 implementation's alone)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from fedasync.aws import transfer
from fedasync.aws.memory import MemoryObjects
from fedasync.aws.objects import MISSING, CorruptDownloadError, Objects, S3Objects
from fedasync.aws.session import AwsContext
from fedasync.core.errors import MissingObjectError, PayloadTooLargeError, RegistryError
from fedasync.core.keys import final_key, global_key, local_key

MiB = 1024 * 1024


@pytest.fixture
async def s3_objects(aws: AwsContext, prefix: str) -> S3Objects:
    bucket = f"{prefix}-models"
    await (await aws.s3()).create_bucket(Bucket=bucket)
    return S3Objects(aws, bucket)


@pytest.fixture(params=["s3", "memory"])
def objects(request: pytest.FixtureRequest, prefix: str) -> Objects:
    if request.param == "memory":
        return MemoryObjects(f"{prefix}-models")
    found: S3Objects = request.getfixturevalue("s3_objects")
    return found


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def uploads_in_progress(aws: AwsContext, bucket: str) -> list[Any]:
    listed = await (await aws.s3()).list_multipart_uploads(Bucket=bucket)
    return list(listed.get("Uploads", []))


def test_keys_follow_the_design_layout() -> None:
    assert global_key("digits", 3) == "digits/global/00000003.safetensors"
    assert local_key("digits", "bank-1", 2, "u1") == "digits/local/bank-1/00000002-u1.safetensors"
    assert final_key("digits") == "digits/final.safetensors"


async def test_bytes_round_trip_with_their_sha256_recorded(
    aws: AwsContext, s3_objects: S3Objects
) -> None:
    objects = s3_objects  # S3 itself is asked about multipart uploads and metadata
    # GIVEN a server object written with its SHA-256
    await objects.put_bytes("t/global/00000000.safetensors", b"weights", sha(b"weights"))
    # WHEN it is read back
    data = await objects.get_bytes("t/global/00000000.safetensors")
    # THEN the same bytes come back and the SHA-256 travels with the object
    assert data == b"weights"
    head = await (await aws.s3()).head_object(
        Bucket=objects.bucket, Key="t/global/00000000.safetensors"
    )
    assert head["Metadata"] == {"sha256": sha(b"weights")}


async def test_a_missing_object_is_the_servers_problem_or_the_silos(objects: Objects) -> None:
    # a key the server chose: its bucket lost an object
    with pytest.raises(RegistryError, match=r"'t/global/00000009\.safetensors' is missing"):
        await objects.get_bytes("t/global/00000009.safetensors")
    # a key a silo named in its record: the update is rejected
    with pytest.raises(MissingObjectError, match="NoSuchKey"):
        await objects.get_bytes("t/local/a/00000001-u.safetensors", named_by_silo=True)


async def test_an_object_over_the_limit_is_refused_unread(objects: Objects) -> None:
    await objects.put_bytes("t/big", b"x" * 100, sha(b"x" * 100))
    with pytest.raises(PayloadTooLargeError, match="'t/big' is 100 bytes; the limit is 99"):
        await objects.get_bytes("t/big", max_bytes=99)
    assert await objects.get_bytes("t/big", max_bytes=100) == b"x" * 100


async def test_objects_are_read_in_order_a_few_at_a_time(objects: Objects) -> None:
    # GIVEN five objects
    for i in range(5):
        await objects.put_bytes(f"t/{i}", bytes([i]) * (i + 1), "-")
    # WHEN they are read with two reads in flight, and a second walk stops after two
    every = [d async for d in objects.iter_objects([f"t/{i}" for i in (3, 0, 4, 1, 2)], ahead=2)]
    first_two: list[bytes] = []
    async with aclosing(objects.iter_objects([f"t/{i}" for i in range(5)], ahead=2)) as walk:
        async for data in walk:
            first_two.append(data)
            if len(first_two) == 2:
                break
    # THEN every object comes back at its key's position
    assert every == [b"\x03" * 4, b"\x00", b"\x04" * 5, b"\x01" * 2, b"\x02" * 3]
    assert first_two == [b"\x00", b"\x01" * 2]


async def test_a_large_file_streams_up_in_parts_and_back_to_a_file(
    aws: AwsContext, s3_objects: S3Objects, tmp_path: Path
) -> None:
    objects = s3_objects  # S3 itself is asked about multipart uploads and metadata
    # GIVEN an 11 MiB file (three 5 MiB parts)
    data = os.urandom(11 * MiB)
    (tmp_path / "local").write_bytes(data)
    key = local_key("t", "a", 0, "u")
    # WHEN a silo uploads it, and it is downloaded to another file
    sizes: list[int] = []
    await objects.upload_file(
        key, tmp_path / "local", sha256=sha(data), part_size=5 * MiB, on_bytes=sizes.append
    )
    size = await objects.download_file(key, tmp_path / "copy", sha256=sha(data))
    # THEN the copy is identical, progress counted every byte, no upload is left open
    assert (tmp_path / "copy").read_bytes() == data
    assert size == sum(sizes) == 11 * MiB
    assert sorted(sizes) == [1 * MiB, 5 * MiB, 5 * MiB]
    assert await uploads_in_progress(aws, objects.bucket) == []


async def test_a_download_that_is_not_what_was_announced_leaves_no_file(
    objects: Objects, tmp_path: Path
) -> None:
    await objects.put_bytes("t/global/00000001.safetensors", b"tampered", sha(b"tampered"))
    # WHEN the announced SHA-256 is another's THEN the error keeps both and no file appears
    with pytest.raises(CorruptDownloadError) as wrong:
        await objects.download_file(
            "t/global/00000001.safetensors", tmp_path / "g", sha256=sha(b"genuine")
        )
    assert (wrong.value.expected, wrong.value.actual) == (sha(b"genuine"), sha(b"tampered"))
    # AND an object that is not there is, to the silo, a wrong one
    with pytest.raises(CorruptDownloadError, match="is missing from bucket") as missing:
        await objects.download_file("t/global/00000002.safetensors", tmp_path / "g", sha256="0")
    assert missing.value.actual == MISSING
    assert list(tmp_path.iterdir()) == []


async def test_a_cancelled_upload_is_aborted_and_leaves_no_object(
    aws: AwsContext, s3_objects: S3Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = s3_objects  # S3 itself is asked about multipart uploads and metadata
    # GIVEN an upload whose second part read blocks (a slow disk, a SIGTERM on its way)
    (tmp_path / "big").write_bytes(os.urandom(11 * MiB))
    reads, release = [], threading.Event()
    real_read = transfer._read_part

    def slow_read(path: Path, offset: int, size: int) -> bytes:
        reads.append(offset)
        if len(reads) == 2:
            release.wait(10)
        return real_read(path, offset, size)

    monkeypatch.setattr(transfer, "_read_part", slow_read)
    upload = asyncio.create_task(
        objects.upload_file("t/partial", tmp_path / "big", sha256="-", part_size=5 * MiB,
                            parts_in_flight=1)
    )  # fmt: skip
    while len(reads) < 2:
        await asyncio.sleep(0.01)
    # WHEN the upload is cancelled mid-way
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    release.set()
    # THEN the multipart upload is aborted and no object (not even a partial one) exists
    assert await uploads_in_progress(aws, objects.bucket) == []
    with pytest.raises(RegistryError, match="is missing"):
        await objects.get_bytes("t/partial")


async def test_a_write_once_keeps_the_first_bytes_and_says_what_they_are(
    objects: Objects,
) -> None:
    # GIVEN a release written once at its version's key
    key = global_key("t", 3)
    first, second = b"first release", b"another try's release"
    assert await objects.put_bytes_once(key, first, sha(first)) == (first, sha(first))
    # WHEN a retry writes different bytes at the same key, once
    got = await objects.put_bytes_once(key, second, sha(second))
    # THEN the first bytes stay, and the retry learns them and their SHA-256
    assert got == (first, sha(first))
    assert await objects.get_bytes(key) == first
