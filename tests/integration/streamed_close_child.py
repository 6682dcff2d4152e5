"""A handler-like child process that closes a sync round by `streamed_round.close_streamed`
under `resource.setrlimit`.

    python -m tests.integration.streamed_close_child   (a JSON job on stdin; one JSON line out)

Once its S3 client exists, the process caps its own address space (RLIMIT_AS) at what it
then maps plus `budget_bytes`, and runs the server's streamed fold of the round
(`streamed_round.fold_to_file`: ranged reads folded range by range, the new global
written to /tmp, every update's SHA-256 verified) under that cap. Then, still capped, it
tries to read one update whole, which must fail. It lifts the cap and sends the file as
the close does (the multipart upload: its memory is parts in flight x part size, not the
model's; aiohttp's buffers for a 5 MiB part do not fit a 16 MiB cap) and prints the new
global's SHA-256 and size.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedasync import limits
from fedasync.aws import transfer
from fedasync.aws.objects import S3Objects
from fedasync.aws.session import AwsContext, Credentials
from fedasync.core import keys
from fedasync.core.codec import TensorSpec
from fedasync.core.messages import UpdateRecord
from fedasync.limits import AggregateSizing
from fedasync.server.streamed_round import fold_to_file
from tests.integration.ranged_child import cap, read_whole, vm_bytes


async def close(job: dict[str, Any]) -> dict[str, Any]:
    creds = None
    if "RANGED_KEY_ID" in os.environ:
        creds = Credentials(os.environ["RANGED_KEY_ID"], os.environ["RANGED_SECRET"])
    spec = tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in job["spec"])
    limits.AGGREGATE_SIZING = AggregateSizing(
        memory_mb=3008, ephemeral_mb=2048, chunk_bytes=job["chunk_bytes"], read_ahead=2,
        part_bytes=5 * 1024 * 1024,
    )  # fmt: skip
    records = [UpdateRecord.model_validate(r) for r in job["records"]]
    async with AwsContext(job["endpoint"], credentials=creds) as aws:
        await aws.s3()  # the client exists before the cap, as in a warm container
        store = SimpleNamespace(objects=S3Objects(aws, job["bucket"]), bucket=job["bucket"])
        view = SimpleNamespace(
            spec=spec, task_name=job["task_name"], cfg=SimpleNamespace(max_model_bytes=1 << 40)
        )
        path = Path(job["spill_dir"]) / "global.safetensors"
        capped = cap(job, vm_bytes())
        made = await fold_to_file(store, view, 0, records, path)  # type: ignore[arg-type]
        capped["whole_object_read"] = await read_whole(aws, {**job, "keys": [records[0].s3_key]})
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        sha, size = made  # type: ignore[misc]
        await transfer.upload_file(
            await aws.s3(), job["bucket"], keys.global_key(job["task_name"], 1), path,
            sha256=sha, part_size=5 * 1024 * 1024, tagging=None,
        )  # fmt: skip
        return {**capped, "sha256": sha, "size": size}


def main() -> None:
    threading.stack_size(512 * 1024)  # see ranged_child
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(close(job))))


if __name__ == "__main__":
    main()
