"""A handler-like child process that folds a sync round under `resource.setrlimit`.

    python -m tests.integration.ranged_child   (a JSON job on stdin; one JSON line out)

Once its FedAvg sum exists (float64, 2x a float32 model), the process caps its own
address space (RLIMIT_AS) at what it then maps plus `budget_bytes`, and folds every
update streamed by ranged GETs under that cap. Then, still capped, it tries the
whole-object path (read one update whole), which must fail. It lifts the cap to write
the result and prints the result's SHA-256.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
from contextlib import aclosing
from pathlib import Path
from typing import Any

from fedasync.aws.objects import S3Objects
from fedasync.aws.ranged import stream_tensors
from fedasync.aws.session import AwsContext, Credentials
from fedasync.core import codec
from fedasync.core.codec import TensorSpec
from fedasync.core.fedavg import FedAvgAccumulator


def vm_bytes(field: str = "VmSize") -> int:  # the address space mapped now
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


async def fold(job: dict[str, Any]) -> dict[str, Any]:
    creds = None
    if "RANGED_KEY_ID" in os.environ:
        creds = Credentials(os.environ["RANGED_KEY_ID"], os.environ["RANGED_SECRET"])
    spec = tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in job["spec"])
    async with AwsContext(job["endpoint"], credentials=creds) as aws:
        acc = FedAvgAccumulator(spec)
        updates = list(zip(job["keys"], job["shas"], job["examples"], strict=True))

        def stream(key: str, sha: str) -> Any:
            return aclosing(
                stream_tensors(S3Objects(aws, job["bucket"]), key, sha256=sha, spec=spec,
                               chunk_bytes=job["chunk_bytes"])
            )  # fmt: skip

        capped: dict[str, Any] = {}
        for key, sha, n in updates:
            async with stream(key, sha) as chunks:
                async for name, start, values in chunks:
                    acc.add_chunk(name, start, values, n)
                    if not capped:  # the sum exists now, and the S3 client with it
                        capped = cap(job, vm_bytes())
        capped["whole_object_read"] = await read_whole(aws, job)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        return {**capped, "sha256": codec.sha256_bytes(codec.encode(acc.result()))}


def cap(job: dict[str, Any], mapped: int) -> dict[str, Any]:
    limit = mapped + job["budget_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return {"mapped_at_cap": mapped, "limit": limit}


async def read_whole(aws: AwsContext, job: dict[str, Any]) -> str:
    """Under the same cap, after the round: the whole-object path must not fit."""
    whole = "fitted"
    try:
        data = await S3Objects(aws, job["bucket"]).get_bytes(job["keys"][0])
        del data
    except Exception as exc:  # aiohttp reports a failed allocation as a payload cut
        # short ("received 17069056 of 67109080 bytes"), not as a MemoryError
        whole = f"failed: {exc!r}"[:300]
    return whole


def main() -> None:
    # small stacks for the executor threads aiohttp may start under the cap (the default
    # 8 MiB each is address space the fold never uses)
    threading.stack_size(512 * 1024)
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(fold(job))))


if __name__ == "__main__":
    main()
