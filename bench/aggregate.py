"""FedAvg bytes in -> bytes out: ours against Flower 1.42's default and its old helper.

    python bench/aggregate.py [--clients 10 50] [--params 10_000_000] [--repeats 3] [--json PATH]

Every arm starts from the same N float32 models, serialized the way that arm receives
them, and ends with the serialized average:
  ours              safetensors bytes -> `codec.decode(copy=False)` (read-only views on
                    the bytes) -> `FedAvgAccumulator` (float64 sum) -> `codec.encode`
  aggregate_inplace Flower 1.42's default (FedAvg(inplace=True)): FitRes built with
                    flwr's own `ndarrays_to_parameters` (.npy bytes per tensor), then
                    `ndarrays_to_parameters(aggregate_inplace(results))`, Flower's
                    deserialisation included (float32 sum)
  aggregate         Flower's old helper (FedAvg(inplace=False)): `parameters_to_ndarrays`
                    of every result, `aggregate(...)`, `ndarrays_to_parameters`
Neither side checks SHA-256 or finiteness here (the server does, Flower does not).
Each arm runs in child processes of its own: peak extra memory is the rise of one run's
peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS with the inputs
loaded, in multiples of one model (glibc told to map every buffer of 64 KiB or more, so
a freed buffer leaves the RSS); time is the median of `--repeats` runs per arm, the
arms interleaved in one more child with the default allocator.
Targets (issue 18): time <= 1.0x aggregate_inplace at 10 and 50 clients.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's fedasync
from _report import Figure, emit, median

ARMS = ("ours", "aggregate_inplace", "aggregate")
Model = dict[str, np.ndarray]


def make_models(n: int, params: int, seed: int = 0) -> tuple[list[Model], list[int]]:
    rng = np.random.default_rng(seed)
    # a plausible layer mix: two big kernels, a medium one, a bias
    sizes = {
        "conv/kernel": params // 2,
        "dense1/kernel": params * 2 // 5,
        "dense2/kernel": params // 10,
    }
    sizes["dense2/bias"] = params - sum(sizes.values())
    models = [
        {k: rng.standard_normal(v, dtype=np.float32) for k, v in sizes.items()} for _ in range(n)
    ]
    return models, [int(x) for x in rng.integers(50, 500, size=n)]


def _inputs(fmt: str, n: int, params: int) -> list[tuple[Any, Any]]:
    """N models serialized as `fmt` receives them, built one model at a time."""
    from fedasync.core import codec

    ns = [int(x) for x in np.random.default_rng(0).integers(50, 500, size=n)]
    blobs: list[Any] = []
    for i in range(n):
        model = make_models(1, params, seed=i + 1)[0][0]
        if fmt == "safetensors":
            blobs.append(codec.encode(model))
        else:
            from flwr.common import ndarrays_to_parameters

            blobs.append(ndarrays_to_parameters(list(model.values())))
        del model
    if fmt == "safetensors":
        return list(zip(blobs, ns, strict=True))
    from flwr.common import Code, FitRes, Status

    ok = Status(code=Code.OK, message="")
    return [(None, FitRes(ok, p, k, {})) for p, k in zip(blobs, ns, strict=True)]


def _ours(inputs: list[tuple[Any, Any]]) -> bytes:
    from fedasync.core import codec
    from fedasync.core.fedavg import FedAvgAccumulator

    acc = FedAvgAccumulator()
    for blob, k in inputs:
        acc.add(codec.decode(blob, copy=False), k)
    return codec.encode(acc.result())


def _inplace(results: list[tuple[Any, Any]]) -> Any:
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy.aggregate import aggregate_inplace

    return ndarrays_to_parameters(aggregate_inplace(results))


def _old(results: list[tuple[Any, Any]]) -> Any:
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy.aggregate import aggregate

    pairs = [(parameters_to_ndarrays(fr.parameters), fr.num_examples) for _, fr in results]
    return ndarrays_to_parameters(aggregate(pairs))


RUNS: dict[str, tuple[str, Callable[[list[tuple[Any, Any]]], Any]]] = {
    "ours": ("safetensors", _ours),
    "aggregate_inplace": ("npy", _inplace),
    "aggregate": ("npy", _old),
}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def mem_child(arm: str, n: int, params: int) -> dict[str, Any]:
    """One run of one arm, alone in this process: its peak RSS above the inputs'."""
    fmt, run = RUNS[arm]
    inputs = _inputs(fmt, n, params)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    out = run(inputs)
    return {"peak": _status("VmHWM") - before, "mean": _result_digest(arm, out)}


def time_child(arms: list[str], n: int, params: int, repeats: int) -> dict[str, list[float]]:
    """The arms' runs interleaved (a, b, c, a, b, c, ...): a busy machine slows all alike.

    Per arm: the median wall time and the median CPU time of this process (on a machine
    shared with other work, the wall clock also counts the time spent waiting for a core)."""
    inputs = {fmt: _inputs(fmt, n, params) for fmt in {RUNS[a][0] for a in arms}}
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(repeats):
        for arm in arms:
            fmt, run = RUNS[arm]
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            out = run(inputs[fmt])
            wall[arm].append(time.perf_counter() - t0)
            cpu[arm].append(time.process_time() - c0)
            del out
    return {a: [median(wall[a]), median(cpu[a])] for a in arms}


def _result_digest(arm: str, out: Any) -> list[float]:
    """Per-tensor mean of the result, decoded again: the arms must agree on the average."""
    from fedasync.core import codec

    if arm == "ours":
        arrays = list(codec.decode(out).values())
    else:
        from flwr.common import parameters_to_ndarrays

        arrays = parameters_to_ndarrays(out)
    return [float(np.mean(a, dtype=np.float64)) for a in arrays]


def _child(args: list[str], env: dict[str, str] | None = None) -> Any:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(arms: tuple[str, ...], n: int, params: int, repeats: int) -> dict[str, Any]:
    # for a memory run, every buffer of 64 KiB or more is its own mapping, returned to the
    # system when freed: otherwise glibc's sliding threshold lets the inputs' freed scratch
    # stay resident, and later allocations reuse it unseen by the RSS
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    got = {arm: _child(["mem", arm, str(n), str(params)], env) for arm in arms}
    times = _child(["time", ",".join(arms), str(n), str(params), str(repeats)])
    for arm in arms:
        got[arm]["time"], got[arm]["cpu"] = times[arm]
    return got


def bench(n: int, params: int, repeats: int, arms: tuple[str, ...]) -> list[Figure]:
    model_bytes = params * 4
    got = measure(arms, n, params, repeats)
    for arm in arms[1:]:
        np.testing.assert_allclose(got[arm]["mean"], got["ours"]["mean"], rtol=1e-3, atol=1e-6)
    ours = got["ours"]
    figs = [
        Figure(f"fedavg_bytes_time_N{n}", ours["time"], "s"),
        Figure(f"fedavg_bytes_peak_extra_N{n}", ours["peak"] / model_bytes, "x model"),
    ]
    for arm in arms[1:]:
        base = got[arm]
        target = "ratio <= 1.0" if arm == "aggregate_inplace" else None
        for what, unit in (("time", "s"), ("cpu", "cpu s")):
            figs.append(
                Figure(
                    f"fedavg_bytes_{what}_vs_{arm}_N{n}",
                    ours[what],
                    unit,
                    base[what],
                    ours[what] / base[what],
                    target,
                )
            )
        mem_ours, mem_base = ours["peak"] / model_bytes, base["peak"] / model_bytes
        figs.append(
            Figure(
                f"fedavg_bytes_peak_extra_vs_{arm}_N{n}",
                mem_ours,
                "x model",
                mem_base,
                mem_ours / mem_base if mem_base else None,
            )
        )
    return figs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, arm, nums = sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4:]]
        if what == "mem":
            print(json.dumps(mem_child(arm, nums[0], nums[1])))
        else:
            print(json.dumps(time_child(arm.split(","), nums[0], nums[1], nums[2])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    try:
        import flwr.server.strategy.aggregate  # noqa: F401

        arms = ARMS
    except ImportError:
        print(
            "flwr not installed (pip install -e '.[bench]'): Flower comparison skipped",
            file=sys.stderr,
        )
        arms = ARMS[:1]
    figures: list[Figure] = []
    for n in args.clients:
        figures += bench(n, args.params, args.repeats, arms)
    emit(figures, args.json_path)


if __name__ == "__main__":
    main()
