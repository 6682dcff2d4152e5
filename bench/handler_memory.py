"""Peak memory of the process that really aggregates a sync round, on the embedded stack.

    python bench/handler_memory.py [--params 1_000_000 10_000_000] [--silos 10]
                                   [--repeats 3] [--json PATH]

Each run is a child process of its own (glibc told to map every buffer of 64 KiB or more,
so a freed buffer leaves the RSS): an embedded stack whose stream pump runs the real
aggregate handler (`server_lambdas.aggregate.lambda_handler`) through
`fedasync.local.invoke.invoke_limited` with the deployed limits, as the local stack runs
it. The silos (`--silos`, float32 models of `--params`) all upload first; each handler
invocation waits for them, then the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs) is taken over the RSS at the invocation's start. Figures, in
multiples of one model's bytes, the median of `--repeats` runs:
  invocation  the largest of one invocation's peak over its own start (a Lambda's view:
              what one call needs beyond what the warm container already holds)
  round       the process's peak over its RSS before the round's first invocation (the
              decoded-models cache a warm container keeps counts here)
Two arms: `deployed` (fedasync.limits.AGGREGATE_SIZING: a model up to its whole-check
budget is checked whole and cached, the close folds it from the cache), and `streamed`
(a sizing whose budget is below one model: every update checked and folded by ranged
reads). Target (issue 18): the streamed handler's peak <= 2x the configured chunk plus a
fixed overhead, flat in the model's size and N.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's fedasync
from _report import Figure, emit, median

MiB = 1024 * 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _settle() -> int:
    """Collect, give freed memory back, reset VmHWM; the RSS now."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status("VmRSS")


def _model(params: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {"conv/kernel": params // 2, "dense1/kernel": params * 2 // 5}
    sizes["dense2/kernel"] = params - sum(sizes.values()) - 10
    sizes["dense2/bias"] = 10
    return {k: rng.standard_normal(v, dtype=np.float32) for k, v in sizes.items()}


async def _round(params: int, silos: int, arm: str) -> dict[str, Any]:
    from fedasync import limits
    from fedasync.core.config import TaskConfig
    from fedasync.deployment import Deployment
    from fedasync.limits import AggregateSizing
    from fedasync.local.stack import EmbeddedStack
    from fedasync.resources import ClientSpec
    from fedasync.server.tasks import start_task
    from server_lambdas.aggregate import lambda_handler
    from tests.integration.test_server_async import first_notice
    from tests.integration.test_server_sync import clients_for, store_for

    if arm == "streamed":  # a whole-check budget below one model: everything streamed
        limits.AGGREGATE_SIZING = AggregateSizing(memory_mb=300, ephemeral_mb=2048)
    gate, peaks = threading.Event(), list[int]()

    running = [0]

    def handler(event: Any, context: Any) -> Any:
        running[0] += 1
        gate.wait()
        start = _settle()
        try:
            return lambda_handler(event, context)
        finally:
            peaks.append(_status("VmHWM") - start)
            running[0] -= 1

    ids = tuple(f"silo-{i:03d}" for i in range(silos))
    spec = Deployment(
        prefix=f"hm{os.getpid()}", clients=tuple(ClientSpec(client_id=c) for c in ids)
    )
    async with EmbeddedStack(spec, aggregate_handler=handler) as stack:
        # two rounds: the first one's close is measured, not the task's finish (which
        # copies the final model whole: fedasync/server/finish.py)
        cfg = TaskConfig.parse(
            {"task_name": "mem", "mode": "sync", "clients": list(ids), "rounds": 2,
             "min_clients": silos, "round_timeout_s": 3600}
        )  # fmt: skip
        store = store_for(stack)
        await start_task(store, stack.endpoints.state_machine_arn, cfg, _model(params, 0))
        for client in clients_for(stack, ids, tuple(range(50, 50 + silos))):
            await client.submit(await first_notice(client))
            gc.collect()
        baseline = _settle()
        gate.set()
        for _ in range(18000):  # the first round closed: version 1 is the head
            if (await store.get_task(cfg.task_name) or {}).get("head_version") == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("round 0 did not close")
        round_peak = _status("VmHWM") - baseline
        while running[0]:  # noqa: ASYNC110 (the invocation that closed it returns)
            await asyncio.sleep(0.05)
        desc = {"status": "SUCCEEDED"}  # round 0 closed (the task goes on to round 1)
    return {"status": desc["status"], "invocation": max(peaks), "round": round_peak}


def _child(params: int, silos: int, arm: str) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    job = json.dumps({"params": params, "silos": silos, "arm": arm})
    out = subprocess.run(
        [sys.executable, __file__, "--child", job], env=env, capture_output=True, text=True,
        check=False, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({arm}, {params}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--silos", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        import structlog  # the stack logs every call: keep stdout for the result

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        print(json.dumps(asyncio.run(_round(job["params"], job["silos"], job["arm"]))))
        return
    from fedasync.limits import AGGREGATE_SIZING

    chunk = AGGREGATE_SIZING.chunk_bytes
    figures: list[Figure] = []
    for params in args.params:
        model = params * 4
        for arm in ("deployed", "streamed"):
            runs = [_child(params, args.silos, arm) for _ in range(args.repeats)]
            assert all(r["status"] == "SUCCEEDED" for r in runs), runs
            for what in ("invocation", "round"):
                peak = median([r[what] for r in runs])
                name = f"sync {args.silos} silos {params / 1e6:g}M params, {arm}: {what} peak"
                target = (
                    f"<= 2 chunks ({2 * chunk // MiB} MiB) + fixed" if arm == "streamed" else None
                )
                figures.append(Figure(name=name, value=peak / model, unit="x model"))
                figures.append(Figure(name=name, value=peak / MiB, unit="MiB", target=target))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
