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
Each arm runs in its own child process: peak extra memory is the rise of its peak RSS
(VmHWM, reset through /proc/self/clear_refs) above the RSS with the inputs loaded, in
multiples of one model; time is the median of `--repeats` runs in that same child.
Targets (issue 18): time <= 1.0x aggregate_inplace at 10 and 50 clients.
"""

from __future__ import annotations

import argparse
import gc
import json
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


def _inputs(arm: str, n: int, params: int) -> tuple[Any, Callable[[Any], bytes | Any]]:
    """The arm's serialized inputs (built one model at a time) and its bytes->bytes run."""
    from fedasync.core import codec
    from fedasync.core.fedavg import FedAvgAccumulator

    rng = np.random.default_rng(0)
    ns = [int(x) for x in rng.integers(50, 500, size=n)]
    blobs: list[Any] = []
    for i in range(n):
        model = make_models(1, params, seed=i + 1)[0][0]
        if arm == "ours":
            blobs.append(codec.encode(model))
        else:
            from flwr.common import ndarrays_to_parameters

            blobs.append(ndarrays_to_parameters(list(model.values())))
        del model
    if arm == "ours":

        def run(inputs: Any) -> bytes:
            acc = FedAvgAccumulator()
            for blob, k in inputs:
                acc.add(codec.decode(blob, copy=False), k)
            return codec.encode(acc.result())

        return list(zip(blobs, ns, strict=True)), run
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy.aggregate import aggregate, aggregate_inplace

    ok = Status(code=Code.OK, message="")
    results = [(None, FitRes(ok, p, k, {})) for p, k in zip(blobs, ns, strict=True)]
    if arm == "aggregate_inplace":
        return results, lambda rs: ndarrays_to_parameters(aggregate_inplace(rs))

    def old(rs: Any) -> Any:
        pairs = [(parameters_to_ndarrays(fr.parameters), fr.num_examples) for _, fr in rs]
        return ndarrays_to_parameters(aggregate(pairs))

    return results, old


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(arm: str, n: int, params: int, repeats: int) -> dict[str, Any]:
    """One arm in this process: peak extra RSS of one run, then the median time."""
    inputs, run = _inputs(arm, n, params)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    out = run(inputs)
    peak = _status("VmHWM") - before
    digest = _result_digest(arm, out)
    del out
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = run(inputs)
        times.append(time.perf_counter() - t0)
        del out
    return {"peak": peak, "time": median(times), "mean": digest}


def _result_digest(arm: str, out: Any) -> list[float]:
    """Per-tensor mean of the result, decoded again: the arms must agree on the average."""
    from fedasync.core import codec

    if arm == "ours":
        arrays = list(codec.decode(out).values())
    else:
        from flwr.common import parameters_to_ndarrays

        arrays = parameters_to_ndarrays(out)
    return [float(np.mean(a, dtype=np.float64)) for a in arrays]


def run_arm(arm: str, n: int, params: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arm, str(n), str(params), str(repeats)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench(n: int, params: int, repeats: int, arms: tuple[str, ...]) -> list[Figure]:
    model_bytes = params * 4
    got = {arm: run_arm(arm, n, params, repeats) for arm in arms}
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
        figs.append(
            Figure(
                f"fedavg_bytes_time_vs_{arm}_N{n}",
                ours["time"],
                "s",
                base["time"],
                ours["time"] / base["time"],
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
        arm, n, params, repeats = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(child(arm, n, params, repeats)))
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
