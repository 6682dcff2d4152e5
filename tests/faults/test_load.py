"""Load: 50 silos submit to an async task as fast as they can for a bounded time.

Every submitted update ends with exactly one verdict (accepted + rejected = submitted),
accepted updates carry contiguous positions 1..n, and every version 0..n exists.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.server.finish import finish_task
from fedasync.server.tasks import start_task
from tests.faults.harness import all_decided, stack_for
from tests.integration.scripted import ScriptedClient
from tests.integration.test_server_sync import initial_model, store_for, wait_execution

SILOS = tuple(f"silo-{i:02d}" for i in range(50))
SUBMIT_FOR_S = 6.0


async def test_fifty_silos_lose_nothing_and_versions_stay_contiguous(moto_server, prefix):
    cfg = TaskConfig.parse(
        {
            "task_name": "load",
            "mode": "async",
            "clients": list(SILOS),
            "alpha": 0.5,
            "staleness": "hinge(1, 4)",
            "max_staleness": 8,
            "max_versions": 100_000,
            "heartbeat_s": 600,
        }
    )
    async with stack_for(moto_server, prefix, clients=SILOS) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        e = stack.endpoints
        silos = [
            ScriptedClient(stack.aws, e.bucket, e.table, e.client_queue_urls[c], c, i, 10)
            for i, c in enumerate(SILOS)
        ]
        submitted: Counter[str] = Counter()
        stop_at = time.monotonic() + SUBMIT_FOR_S

        async def hammer(silo: ScriptedClient) -> None:
            rng = np.random.default_rng(silo.index)
            n = 0
            while time.monotonic() < stop_at:
                task = await store.get_task("load") or {}
                version = int(task.get("head_version", 0))
                notice = GlobalModelNotice(
                    task_name="load",
                    mode="async",
                    version=version,
                    s3_key=keys.global_key("load", version),
                    sha256=task["head_sha256"],
                    size_bytes=int(task.get("head_size", 0)),
                )
                weights = {
                    k: (v + rng.normal(scale=0.01, size=v.shape)).astype(v.dtype)
                    for k, v in initial_model().items()
                }
                await silo.submit(notice, weights, update_id=f"{silo.client_id}-n{n:06d}")
                submitted[silo.client_id] += 1
                n += 1

        # WHEN 50 silos submit as fast as they can
        await asyncio.gather(*(hammer(s) for s in silos))
        total = sum(submitted.values())

        # THEN every submitted update gets exactly one verdict
        items = await all_decided(store, "load", count=total, timeout_s=120)
        verdicts = Counter(i["verdict"] for i in items)
        assert verdicts["accepted"] + verdicts["rejected"] == total == len(items)
        assert verdicts["accepted"] > 0
        reasons = Counter(i.get("reason") for i in items if i["verdict"] == "rejected")
        assert set(reasons) <= {"stale"}, reasons
        # AND accepted updates hold contiguous positions, one version each (FedAsync)
        accepted = sorted(int(i["seq"]) for i in items if i["verdict"] == "accepted")
        assert accepted == list(range(1, verdicts["accepted"] + 1))
        task = await store.get_task("load")
        assert int(task["absorbed"]) == int(task["head_version"]) == verdicts["accepted"]
        s3 = await stack.aws.s3()
        listed = await s3.list_objects_v2(Bucket=e.bucket, Prefix="load/global/")
        stored = sorted(o["Key"] for o in listed.get("Contents", []))
        assert stored == [keys.global_key("load", v) for v in range(verdicts["accepted"] + 1)]
        # (and the task ends cleanly when stopped)
        await finish_task(store, "load", "stopped", token=task.get("token"))
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        print(f"load: {total} submitted by 50 silos in {SUBMIT_FOR_S}s: {dict(verdicts)}")
