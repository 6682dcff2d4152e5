"""Client model transfers: peak extra RSS and throughput, ours against read-it-all.

    python bench/client_transfer.py [--size-mb 400] [--repeats 3] [--quick] [--json PATH]
    python bench/client_transfer.py --deltas [--repeats 3]   # fp32 model vs fp16 delta

A safetensors model of `--size-mb` MB is written to a temporary directory a few MiB at
a time, and a moto server runs in its own process (it keeps objects in memory, which
must not count against the client). Each measured operation then runs in a fresh
child process, so the variants cannot inflate each other:

- upload, ours: `fedasync.aws.transfer.upload_file`, multipart, per-part SHA-256;
- upload, baseline: `path.read_bytes()` then one aioboto3 `put_object`;
- download, ours: `fedasync.aws.transfer.download_file`, streamed to disk with SHA-256;
- download, baseline: `get_object(...)["Body"].read()` then `write_bytes`.

The child imports everything, opens its S3 client and makes one request, then takes
its RSS as the baseline, resets the kernel's high-water mark (/proc/self/clear_refs;
elsewhere a 1 ms psutil sampler) and times the operation alone. Peak extra RSS is
that high-water mark minus the baseline, as a multiple of the model's size;
throughput is model MB (10^6 bytes) per second. Both are medians over `--repeats`.
Target (issue): upload peak extra <= 1.2x model, against >= 2x for read-all-then-put.

Measured on 2026-11-25 on a 2-core machine (400 MB, 3 repeats, medians; load average
~4 from other work, so throughput is noisy: a second run gave 92 vs 112 MB/s up, 280
vs 212 MB/s down):
  upload peak extra RSS    ours 0.32x model (128 MB)  read-all-then-put 2.03x (812 MB)
  upload throughput        ours 110 MB/s              put_object 114 MB/s   (0.96x)
  download peak extra RSS  ours 0.056x (22 MB)        read-all 2.03x (810 MB)
  download throughput      ours 378 MB/s              read-all 163 MB/s     (2.3x)
Our upload's extra memory is bounded by parts in flight, not by model size: about
2 x part_size x PARTS_IN_FLIGHT (4 x 8 MiB parts, each copied once more below us:
botocore wraps a bytes Body in BytesIO and aiohttp's BytesIOPayload.getbuffer()
unshares it) plus allocator slack. So at `--quick`'s 64 MB the ratio reads ~1.2x
while the absolute figure is the same ~80-130 MB; judge the target at 400 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, emit, median

BUCKET = "bench-client-transfer"
UPLOAD_VARIANTS = ("upload_ours", "upload_read_all_put")
DOWNLOAD_VARIANTS = ("download_ours", "download_read_all")
_WRITE_CHUNK = 4 * 1024 * 1024
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- the model file and the server (parent process) ---------------------------


def write_model(path: Path, size_bytes: int, seed: int = 0) -> str:
    """A one-tensor float32 safetensors file, written and hashed 4 MiB at a time."""
    count = size_bytes // 4
    header = json.dumps(
        {
            "__metadata__": {"bench": "client_transfer"},
            "weights": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads its header to 8 bytes
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for piece in (struct.pack("<Q", len(header)), header):
            fh.write(piece)
            digest.update(piece)
        left = count
        while left:
            n = min(left, _WRITE_CHUNK // 4)
            chunk = rng.standard_normal(n, dtype=np.float32).tobytes()
            fh.write(chunk)
            digest.update(chunk)
            left -= n
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_process() -> Iterator[str]:
    """`python -m moto.server` on a free loopback port, stopped on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **_CREDENTIALS},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_child(variant: str, endpoint: str, path: Path, sha256: str) -> dict[str, float]:
    """One operation in a fresh interpreter; returns its peak extra RSS and seconds."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, endpoint, str(path), sha256],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **_CREDENTIALS},
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- one measured operation (child process) -----------------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1))


@contextmanager
def peak_rss() -> Iterator[Callable[[], int]]:
    """Yield a function giving the peak RSS (bytes) since entry, through the block."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        _status_kib("VmHWM")
    except OSError:
        yield from _sampled_peak()
        return
    yield lambda: _status_kib("VmHWM") * 1024


def _sampled_peak() -> Iterator[Callable[[], int]]:
    import psutil

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: max(peak[0], proc.memory_info().rss)
    finally:
        done.set()
        thread.join()


async def _operation(variant: str, s3: Any, path: Path, sha256: str) -> None:
    from client.config import DEFAULT_PART_BYTES
    from fedasync.aws import transfer

    key = f"{variant}/model.safetensors"
    dest = path.with_name(f"{variant}.safetensors")
    if variant == "upload_ours":
        await transfer.upload_file(
            s3, BUCKET, key, path, sha256=sha256, part_size=DEFAULT_PART_BYTES
        )
    elif variant == "upload_read_all_put":
        data = await asyncio.to_thread(path.read_bytes)
        await s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    elif variant == "download_ours":
        await transfer.download_file(s3, BUCKET, "source/model.safetensors", dest, sha256=sha256)
    elif variant == "download_read_all":
        response = await s3.get_object(Bucket=BUCKET, Key="source/model.safetensors")
        data = await response["Body"].read()
        await asyncio.to_thread(dest.write_bytes, data)
    else:
        raise ValueError(f"unknown variant {variant!r}")


async def _child_main(variant: str, endpoint: str, path: Path, sha256: str) -> dict[str, float]:
    from fedasync.aws.session import AwsContext

    async with AwsContext(endpoint) as aws:
        s3 = await aws.s3()
        await s3.head_bucket(Bucket=BUCKET)  # connection, credentials, endpoints resolved
        gc.collect()
        base = _status_kib("VmRSS") * 1024
        with peak_rss() as peak:
            t0 = time.perf_counter()
            await _operation(variant, s3, path, sha256)
            seconds = time.perf_counter() - t0
            top = peak()
    path.with_name(f"{variant}.safetensors").unlink(missing_ok=True)
    return {"extra_bytes": top - base, "seconds": seconds}


def child(argv: list[str]) -> None:
    variant, endpoint, path, sha256 = argv
    print(json.dumps(asyncio.run(_child_main(variant, endpoint, Path(path), sha256))))


# --- the comparison (parent process) ------------------------------------------


async def _prepare(endpoint: str, path: Path, sha256: str) -> None:
    from fedasync.aws import transfer
    from fedasync.aws.session import AwsContext

    async with AwsContext(endpoint) as aws:
        s3 = await aws.s3()
        await s3.create_bucket(Bucket=BUCKET)
        await transfer.upload_file(
            s3, BUCKET, "source/model.safetensors", path, sha256=sha256, part_size=8 << 20
        )


def bench(size_mb: int, repeats: int) -> list[Figure]:
    size = size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        path = Path(tmp) / "model.safetensors"
        sha256 = write_model(path, size)
        size = path.stat().st_size
        with moto_process() as endpoint:
            os.environ.update({k: v for k, v in _CREDENTIALS.items() if k not in os.environ})
            asyncio.run(_prepare(endpoint, path, sha256))
            runs: dict[str, list[dict[str, float]]] = {
                v: [] for v in UPLOAD_VARIANTS + DOWNLOAD_VARIANTS
            }
            for _ in range(repeats):  # interleaved, so drift hits every variant alike
                for variant, results in runs.items():
                    results.append(run_child(variant, endpoint, path, sha256))
    mem = {v: median([r["extra_bytes"] / size for r in rs]) for v, rs in runs.items()}
    rate = {v: median([size / 1e6 / r["seconds"] for r in rs]) for v, rs in runs.items()}
    figs = []
    for what, ours, base, target in (
        ("upload", "upload_ours", "upload_read_all_put", "<= 1.2x model (baseline >= 2x)"),
        ("download", "download_ours", "download_read_all", None),
    ):
        figs.append(
            Figure(
                f"{what}_peak_extra_rss_{size_mb}MB",
                mem[ours],
                "x model",
                mem[base],
                mem[ours] / mem[base],
                target,
            )
        )
        figs.append(
            Figure(
                f"{what}_peak_extra_rss_MB_{size_mb}MB",
                mem[ours] * size / 1e6,
                "MB",
                mem[base] * size / 1e6,
                mem[ours] / mem[base],
                None,
            )
        )
        figs.append(
            Figure(
                f"{what}_throughput_{size_mb}MB",
                rate[ours],
                "MB/s",
                rate[base],
                rate[ours] / rate[base],
                None,
            )
        )
    return figs


# --- fp32 model against fp16 delta uploads (parent process, one moto) --------------


def _upload_timed(endpoint: str, path: Path, sha256: str, key: str) -> float:
    from client.config import DEFAULT_PART_BYTES
    from fedasync.aws import transfer
    from fedasync.aws.session import AwsContext

    async def go() -> float:
        async with AwsContext(endpoint) as aws:
            s3 = await aws.s3()
            await s3.head_bucket(Bucket=BUCKET)
            t0 = time.perf_counter()
            await transfer.upload_file(
                s3, BUCKET, key, path, sha256=sha256, part_size=DEFAULT_PART_BYTES
            )
            return time.perf_counter() - t0

    return asyncio.run(go())


def _delta_point(endpoint: str, tmp: Path, params: int, repeats: int) -> list[Figure]:
    """Write + upload of one update of `params` float32 values, as the silo does it: its
    model (`codec.write_file`) or its fp16 delta (`client.delta_upload.write_delta`'s
    steps); bytes sent, median seconds, and the worst error of the local model the server
    reads back, against the model itself."""
    from fedasync.core import codec
    from fedasync.core.deltas import make_delta, write_delta_file

    rng = np.random.default_rng(params)
    base = {"w": rng.standard_normal(params, dtype=np.float32)}
    local = {"w": (base["w"] + rng.normal(0, 1e-3, params)).astype(np.float32)}
    full, half = tmp / "full.safetensors", tmp / "delta.safetensors"
    times: dict[str, list[float]] = {"fp32": [], "fp16_delta": []}
    for i in range(repeats):
        t0 = time.perf_counter()
        sha = codec.write_file(local, full)
        write_s = time.perf_counter() - t0
        times["fp32"].append(write_s + _upload_timed(endpoint, full, sha, f"fp32/{i}"))
        t0 = time.perf_counter()
        sha = write_delta_file(make_delta(local, base, "float16", "bench"), half, 0, "float16")
        write_s = time.perf_counter() - t0
        times["fp16_delta"].append(write_s + _upload_timed(endpoint, half, sha, f"d16/{i}"))
    read_back = base["w"] + codec.read_file(half)["w"].astype(np.float32)
    err = float(np.max(np.abs(read_back.astype(np.float64) - local["w"])))
    cast_err = float(np.max(np.abs(local["w"].astype(np.float16).astype(np.float64) - local["w"])))
    tag = f"{params // 1_000_000}M"
    sizes = full.stat().st_size, half.stat().st_size
    t32, t16 = median(times["fp32"]), median(times["fp16_delta"])
    return [
        Figure(f"delta_upload_bytes_{tag}", sizes[1], "bytes", sizes[0], sizes[1] / sizes[0],
               "0.5x fp32 + header"),
        Figure(f"delta_upload_seconds_{tag}", t16, "s", t32, t16 / t32, None),
        Figure(f"delta_max_abs_error_{tag}", err, "abs", cast_err, err / cast_err,
               "baseline: the fp16 cast of the weights"),
    ]  # fmt: skip


def bench_deltas(params: list[int], repeats: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp, moto_process() as endpoint:
        os.environ.update({k: v for k, v in _CREDENTIALS.items() if k not in os.environ})

        async def bucket() -> None:
            from fedasync.aws.session import AwsContext

            async with AwsContext(endpoint) as aws:
                await (await aws.s3()).create_bucket(Bucket=BUCKET)

        asyncio.run(bucket())
        return [f for n in params for f in _delta_point(endpoint, Path(tmp), n, repeats)]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MB, 1 repeat")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument(
        "--deltas", action="store_true", help="fp32 model vs fp16 delta uploads, 1M and 10M"
    )
    args = parser.parse_args()
    if args.deltas:
        emit(bench_deltas([1_000_000, 10_000_000], args.repeats), args.json_path)
        return
    if args.quick:
        args.size_mb, args.repeats = 64, 1
    emit(bench(args.size_mb, args.repeats), args.json_path)


if __name__ == "__main__":
    main()
