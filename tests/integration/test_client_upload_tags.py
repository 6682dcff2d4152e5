"""Every local update a silo uploads carries the tag the bucket's expiry rule selects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from client.config import MIN_PART_BYTES
from fedasync.aws.session import AwsContext
from fedasync.aws.transfer import upload_file
from fedasync.core.keys import local_key
from fedasync.deployment import Deployment
from fedasync.local.provision import provision

# What infra/storage.py's `expire-local-updates` rule filters on, written out by hand
EXPECTED_TAGS = [{"Key": "fedasync-kind", "Value": "local-update"}]


@pytest.mark.parametrize("size", [1024, 2 * MIN_PART_BYTES + 1], ids=["single-put", "multipart"])
async def test_an_uploaded_local_update_is_tagged_for_expiry(
    aws: AwsContext, prefix: str, tmp_path: Path, size: int
) -> None:
    # GIVEN a stack and a local model file (small: one PutObject; large: three parts)
    endpoints = await provision(aws, Deployment(prefix=prefix))
    path = tmp_path / "local.safetensors"
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path.write_bytes(data)
    key = local_key("digits", "bank-1", 0, "u1")
    # WHEN the silo uploads it
    s3 = await aws.s3()
    await upload_file(
        s3,
        endpoints.bucket,
        key,
        path,
        sha256=hashlib.sha256(data).hexdigest(),
        part_size=MIN_PART_BYTES,
    )
    # THEN the object is whole and carries exactly the expiry tag
    head = await s3.head_object(Bucket=endpoints.bucket, Key=key)
    assert head["ContentLength"] == size
    tagging = await s3.get_object_tagging(Bucket=endpoints.bucket, Key=key)
    assert tagging["TagSet"] == EXPECTED_TAGS
