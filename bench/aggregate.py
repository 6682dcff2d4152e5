"""FedAvg: peak extra memory and time, ours against stack-then-average and Flower.

    python bench/aggregate.py [--clients 10 50] [--params 10_000_000] [--repeats 3] [--json PATH]

All three run on the same in-memory float32 models. Peak extra memory is measured
with tracemalloc (numpy reports its buffers to it) above what the inputs already
hold, as a multiple of one model's size. Time is the median of `--repeats` runs
measured without tracemalloc. Targets (issue 3): peak extra <= 2.5x one model and
flat in N; time <= 1.0x Flower's.

Measured on 2026-11-25 on a 2-core machine (quiet, --repeats 5, medians):
    peak extra      2.21x one model for N = 10 and 50 (Flower 11.3x / 51.3x,
                    stack-then-average 16x / 76x)
    time, N = 10    0.074 s, Flower 0.083 s (0.89x)
    time, N = 50    0.285 s, Flower 0.367 s (0.78x)
Before widening with a plain cast (numpy's casting multiply), 1.45x / 1.12x Flower's.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, emit, median

from fedasync.core.fedavg import FedAvgAccumulator

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


def ours(models: list[Model], ns: list[int]) -> Model:
    acc = FedAvgAccumulator()
    for m, n in zip(models, ns, strict=True):
        acc.add(m, n)
    return acc.result()


def stack_then_average(models: list[Model], ns: list[int]) -> Model:
    return {
        k: np.average(np.stack([m[k] for m in models]), axis=0, weights=ns).astype(np.float32)
        for k in models[0]
    }


def flower(models: list[Model], ns: list[int]) -> Any:
    from flwr.server.strategy.aggregate import aggregate

    return aggregate([(list(m.values()), n) for m, n in zip(models, ns, strict=True)])


def peak_extra(
    fn: Callable[[list[Model], list[int]], Any], models: list[Model], ns: list[int]
) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    out = fn(models, ns)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak - before


def timed(
    fn: Callable[[list[Model], list[int]], Any], models: list[Model], ns: list[int], repeats: int
) -> float:
    runs = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn(models, ns)
        runs.append(time.perf_counter() - t0)
        del out
    return median(runs)


def check_agree(models: list[Model], ns: list[int], have_flower: bool) -> None:
    a, b = ours(models, ns), stack_then_average(models, ns)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    if have_flower:
        for k, arr in zip(a, flower(models, ns), strict=True):
            np.testing.assert_allclose(a[k], arr, rtol=1e-4, atol=1e-5)


def bench(n: int, params: int, repeats: int, have_flower: bool) -> list[Figure]:
    models, ns = make_models(n, params)
    model_bytes = sum(a.nbytes for a in models[0].values())
    check_agree(make_models(3, 1000)[0], [1, 2, 3], have_flower)
    figs = []
    mem_ours = peak_extra(ours, models, ns) / model_bytes
    mem_stack = peak_extra(stack_then_average, models, ns) / model_bytes
    figs.append(
        Figure(
            f"fedavg_peak_extra_N{n}",
            mem_ours,
            "x model",
            mem_stack,
            mem_ours / mem_stack,
            "<= 2.5x model, flat in N",
        )
    )
    t_ours = timed(ours, models, ns, repeats)
    t_stack = timed(stack_then_average, models, ns, repeats)
    figs.append(Figure(f"fedavg_time_vs_stack_N{n}", t_ours, "s", t_stack, t_ours / t_stack, None))
    if have_flower:
        mem_fl = peak_extra(flower, models, ns) / model_bytes
        figs.append(
            Figure(
                f"fedavg_peak_extra_vs_flower_N{n}",
                mem_ours,
                "x model",
                mem_fl,
                mem_ours / mem_fl,
                "<= 2.5x model",
            )
        )
        t_fl = timed(flower, models, ns, repeats)
        figs.append(
            Figure(f"fedavg_time_vs_flower_N{n}", t_ours, "s", t_fl, t_ours / t_fl, "ratio <= 1.0")
        )
    return figs


def main() -> None:
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

        have_flower = True
    except ImportError:
        print(
            "flwr not installed (pip install -e '.[bench]'): Flower comparison skipped",
            file=sys.stderr,
        )
        have_flower = False
    figures: list[Figure] = []
    for n in args.clients:
        figures += bench(n, args.params, args.repeats, have_flower)
    emit(figures, args.json_path)


if __name__ == "__main__":
    main()
