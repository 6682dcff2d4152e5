"""What secure noise costs: SecureGaussian (ChaCha20 + Box-Muller) against numpy's PCG64.

    python bench/noise.py [--millions 4] [--repeats 3] [--json PATH]

Each variant draws `--millions` million standard normals (float64) in one process, one
after the other, `--repeats` times; the figure is the median throughput in MB of
float64 output per second (10^6 bytes), and the ratio ours / numpy. Also the time to
noise a float32 model of the same number of parameters with `add_noise` (the float64
round trip and the cast back included), which is what a DP release pays.

numpy's generator is the baseline for speed only: it is not a cryptographic source and
is never used for DP noise (see fedasync/core/noise.py).

Measured on 2026-12-01 on the shared 2-core machine (4 M normals, 3 repeats, medians,
load average ~7 from other work, so treat the absolute figures as rough):
  SecureGaussian.standard_normal     72 MB/s   (9.0 M normals/s)
  numpy default_rng standard_normal  238 MB/s  (29.8 M normals/s)    ratio 0.30
  add_noise on a 4 M-parameter float32 model: 0.34 s (so ~0.9 s at 10 M per release).
The cipher is not the cost (OpenSSL's ChaCha20 runs at GB/s); Box-Muller's log, sqrt,
sin and cos over float64 arrays are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, emit, median

from fedasync.core.noise import SecureGaussian, add_noise


def _timed(fn: object, repeats: int) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def bench(count: int, repeats: int) -> list[Figure]:
    secure = SecureGaussian()
    pcg = np.random.default_rng()
    megabytes = 8 * count / 1e6
    t_ours = _timed(lambda: secure.standard_normal(count), repeats)
    t_numpy = _timed(lambda: pcg.standard_normal(count), repeats)
    ours, base = megabytes / t_ours, megabytes / t_numpy
    model = {"w": np.zeros(count, dtype=np.float32)}
    t_noise = _timed(lambda: add_noise(model, 1.0, secure), repeats)
    return [
        Figure("secure_normals_throughput", ours, "MB/s", base, ours / base, "informative"),
        Figure("secure_normals_per_s", count / t_ours / 1e6, "M/s", count / t_numpy / 1e6),
        Figure("add_noise_float32_model", t_noise, "s", None, None, f"{count} params"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--millions", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    emit(bench(int(args.millions * 1e6), args.repeats), args.json_path)


if __name__ == "__main__":
    main()
