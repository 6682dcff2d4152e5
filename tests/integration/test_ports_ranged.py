"""Tensor-streamed reading of an update (ranged GETs, hashed as read): the contract of
`Objects.ranged` and `fedasync.aws.ranged`, against S3 on moto and the in-memory objects
the server's unit tier runs on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
from contextlib import aclosing

import ml_dtypes
import numpy as np
import pytest

from fedasync.aws.memory import MemoryObjects
from fedasync.aws.objects import Objects, S3Objects
from fedasync.aws.ranged import stream_tensors
from fedasync.aws.session import AwsContext
from fedasync.core import codec
from fedasync.core.errors import (
    ChecksumMismatchError,
    IncompatibleUpdateError,
    MissingObjectError,
    SchemaError,
)
from fedasync.core.fedavg import FedAvgAccumulator, fedavg


def update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv/kernel": rng.normal(size=(10, 100)).astype(np.float32),
        "embed": rng.normal(size=37).astype(ml_dtypes.bfloat16),
        "scale": np.array(rng.normal(), np.float16),
        "head": rng.normal(size=5),
        "unused": np.zeros((0, 3), np.float32),
    }


@pytest.fixture
async def bucket(aws: AwsContext, prefix: str) -> str:
    name = f"{prefix}-models"
    await (await aws.s3()).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_objects(aws: AwsContext, bucket: str) -> S3Objects:
    return S3Objects(aws, bucket)


@pytest.fixture(params=["s3", "memory"])
def objects(request: pytest.FixtureRequest) -> Objects:
    if request.param == "memory":
        return MemoryObjects("unit-models")
    found: S3Objects = request.getfixturevalue("s3_objects")
    return found


async def put(objects: Objects, key: str, blob: bytes) -> str:
    sha = hashlib.sha256(blob).hexdigest()
    await objects.put_bytes(key, blob, sha)
    return sha


async def collect(stream) -> list[tuple[str, int, np.ndarray]]:
    async with aclosing(stream) as chunks:
        return [(name, start, values.copy()) async for name, start, values in chunks]


async def test_a_round_streamed_chunk_by_chunk_folds_to_the_whole_objects_bytes(objects):
    # GIVEN three updates in S3 (float32, bf16, fp16, float64 and an empty tensor), with
    # 10, 30 and 60 examples
    models = [update(seed) for seed in (1, 2, 3)]
    shas = [await put(objects, f"u{i}", codec.encode(m)) for i, m in enumerate(models)]
    spec = codec.spec_of(models[0])
    # WHEN each is read in ranges of at most 64 bytes (the header in two reads, a 32-byte
    # probe first) and its chunks are folded one by one
    acc = FedAvgAccumulator(spec)
    for i, (sha, n) in enumerate(zip(shas, (10, 30, 60), strict=True)):
        stream = stream_tensors(
            objects, f"u{i}", sha256=sha, spec=spec, chunk_bytes=64, head_probe=32
        )
        chunks = await collect(stream)
        # THEN no chunk is over 64 bytes, and together they are exactly the update
        assert max(values.nbytes for _, _, values in chunks) <= 64
        for name, arr in models[i].items():
            parts = sorted((s, v) for nm, s, v in chunks if nm == name)
            flat = np.concatenate([v for _, v in parts]) if parts else arr.reshape(-1)[:0]
            assert flat.tobytes() == arr.tobytes()
        for name, start, values in chunks:
            acc.add_chunk(name, start, values, n)
    # AND the streamed FedAvg has the bytes of FedAvg over the whole decoded objects
    whole = fedavg(zip(models, (10, 30, 60), strict=True))
    assert codec.encode(acc.result()) == codec.encode(whole)


async def test_bytes_that_do_not_hash_to_the_record_are_refused_at_the_end(objects):
    # GIVEN an object and a SHA-256 that is not its own
    sha = await put(objects, "u", codec.encode(update(1)))
    wrong = "0" * 64
    # WHEN it is streamed against the wrong one THEN, after the last chunk, the same error
    # the whole-object path raises says which object and both digests
    with pytest.raises(ChecksumMismatchError) as info:
        await collect(stream_tensors(objects, "u", sha256=wrong, chunk_bytes=256))
    assert f"has SHA-256 {sha}; expected {wrong}" in str(info.value)
    assert info.value.reason == "checksum"


async def test_an_object_rewritten_mid_read_is_refused(objects):
    # GIVEN an object being streamed one range at a time, its first GET (whose bytes are
    # reused: a range inside them costs no request) only 16 bytes
    sha = await put(objects, "u", codec.encode(update(1)))
    stream = stream_tensors(objects, "u", sha256=sha, chunk_bytes=128, ahead=1, head_probe=16)
    async with aclosing(stream) as chunks:
        await anext(chunks)
        # WHEN it is overwritten before the next range is read
        await put(objects, "u", codec.encode(update(2)))
        # THEN the next ranged GET (If-Match on the first ETag) is refused
        with pytest.raises(ChecksumMismatchError, match="changed while it was being read"):
            async for _ in chunks:
                pass


def _payload(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 12


@pytest.mark.parametrize(
    ("blob", "error", "fragment"),
    [
        (
            _payload({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}),
            SchemaError,
            "tensor 'a' begins at data byte 8",
        ),
        (b"\x80\x04" + b"\0" * 20, SchemaError, "pickle"),
        (b"", SchemaError, "is empty"),
        (
            _payload({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}),
            IncompatibleUpdateError,
            r"missing \['w'\], unexpected \['a'\]",
        ),
    ],
    ids=["gap-in-data", "pickle", "empty", "other-model"],
)
async def test_a_bad_header_is_refused_before_any_tensor_is_read(objects, blob, error, fragment):
    # GIVEN an object whose header is not a safetensors header of the global model
    sha = await put(objects, "u", blob)
    spec = codec.spec_of({"w": np.zeros(3, np.float32)})
    # WHEN it is streamed THEN the first step raises, naming the problem
    stream = stream_tensors(objects, "u", sha256=sha, spec=spec, who="update from 'x'")
    async with aclosing(stream) as chunks:
        with pytest.raises(error, match=fragment):
            await anext(chunks)


async def test_a_missing_object_named_by_a_silo_is_the_silos_fault(objects):
    stream = stream_tensors(objects, "nope", sha256="0" * 64, named_by_silo=True)
    with pytest.raises(MissingObjectError, match="'nope' is missing"):
        await collect(stream)


PARAMS = 16 * 1024 * 1024  # 64 MiB of float32 per update
MODEL_BYTES = PARAMS * 4


def two_big_models(seed: int) -> list[dict[str, np.ndarray]]:
    """Two float32 updates of 64 MiB each: a big random kernel and a small constant bias."""
    rng = np.random.default_rng(seed)
    return [
        {
            "big/kernel": rng.standard_normal(PARAMS - 1000, np.float32),
            "bias": np.ones(1000, np.float32) * i,
        }
        for i in range(2)
    ]


def spec_of(model: dict[str, np.ndarray]) -> list[dict]:
    return [
        {"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in codec.spec_of(model)
    ]


async def run_capped_child(module: str, job: dict, aws: AwsContext) -> dict:
    """Run `module` as a child process fed `job` (its address space capped by the child
    itself), with the test principal's keys; its last stdout line, as JSON."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}  # no 64 MiB arena per thread
    if aws.credentials is not None:
        env |= {
            "RANGED_KEY_ID": aws.credentials.access_key_id,
            "RANGED_SECRET": aws.credentials.secret_access_key,
        }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", module],
        input=json.dumps(job), capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


async def test_a_process_capped_at_a_quarter_of_the_model_folds_a_streamed_round(
    aws, bucket, moto_server
):
    # GIVEN two float32 updates of 64 MiB each (16M parameters) in S3, 10 and 30 examples
    models = two_big_models(5)
    keys = ["big/0", "big/1"]
    shas = [
        await put(S3Objects(aws, bucket), k, codec.encode(m))
        for k, m in zip(keys, models, strict=True)
    ]
    expected = codec.sha256_bytes(codec.encode(fedavg(zip(models, (10, 30), strict=True))))
    spec = spec_of(models[0])
    del models
    job = {
        "endpoint": moto_server.endpoint_url, "bucket": bucket, "keys": keys, "shas": shas,
        "examples": [10, 30], "spec": spec, "chunk_bytes": 1024 * 1024,
        "budget_bytes": MODEL_BYTES // 4,
    }  # fmt: skip
    # WHEN a child process caps its address space, once its FedAvg sum exists, at what it
    # then maps plus a quarter of one model, and folds the round streamed in 1 MiB ranges
    got = await run_capped_child("tests.integration.ranged_child", job, aws)
    # THEN reading one update whole does not fit under the cap, the streamed round does,
    # and its result has the bytes of FedAvg over the whole models, unconstrained
    assert got["limit"] - got["mapped_at_cap"] == MODEL_BYTES // 4
    assert got["whole_object_read"].startswith("failed: "), got["whole_object_read"]
    assert got["sha256"] == expected


async def test_a_process_capped_at_a_quarter_of_the_model_closes_a_streamed_round(
    aws, bucket, moto_server, tmp_path
):
    from fedasync.core import keys as model_keys

    # GIVEN two float32 updates of 64 MiB each (16M parameters) in S3, 10 and 30 examples
    models = two_big_models(6)
    records = []
    for i, m in enumerate(models):
        key = model_keys.local_key("capped", f"silo-{i}", 0, "r00000000")
        blob = codec.encode(m)
        records.append(
            {"task_name": "capped", "client_id": f"silo-{i}", "update_id": "r00000000",
             "base_version": 0, "round_id": 0, "s3_key": key,
             "sha256": await put(S3Objects(aws, bucket), key, blob), "size_bytes": len(blob),
             "num_examples": (10, 30)[i]}
        )  # fmt: skip
        del blob
    expected = codec.encode(fedavg(zip(models, (10, 30), strict=True)))
    spec = spec_of(models[0])
    del models
    job = {
        "endpoint": moto_server.endpoint_url, "bucket": bucket, "records": records,
        "task_name": "capped", "spec": spec, "chunk_bytes": 1024 * 1024,
        "budget_bytes": MODEL_BYTES // 4, "spill_dir": str(tmp_path),
    }  # fmt: skip
    # WHEN a child process caps its address space at what it maps plus a quarter of one
    # model, then runs the server's streamed fold of the round (1 MiB ranges, 2 ahead) and,
    # the cap lifted, its multipart upload
    got = await run_capped_child("tests.integration.streamed_close_child", job, aws)
    # THEN reading one update whole does not fit under the cap, the fold does, and the
    # stored version 1 has the bytes of FedAvg over the whole models, unconstrained
    assert got["limit"] - got["mapped_at_cap"] == MODEL_BYTES // 4
    assert got["whole_object_read"].startswith("failed: "), got["whole_object_read"]
    stored = await (await aws.s3()).get_object(
        Bucket=bucket, Key=model_keys.global_key("capped", 1)
    )
    async with stored["Body"] as body:
        blob = await body.read()
    assert (got["sha256"], got["size"]) == (hashlib.sha256(expected).hexdigest(), len(expected))
    assert blob == expected
