"""Service time per request inside the moto server process (a measuring aid, off unless
`FEDASYNC_MOTO_TIMING` names a file): one JSON line per request with the operation, the
access key that signed it, its wall time in the server and the CPU its server thread
spent on it. `bench/scale.py --profile` reads it to say where a silo's round goes.

Stdlib only: it runs inside the moto server process, around every request.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from fedasync.local.calls import signer
from fedasync.local.moto_iam import WsgiApp

ENV_TIMING_LOG = "FEDASYNC_MOTO_TIMING"
ENV_PROFILE = "FEDASYNC_MOTO_PROFILE"  # also cProfile every request; stats to this path at exit


def operation(environ: dict[str, Any], body: bytes) -> str:
    """`service:Operation` for the JSON and query protocols, `s3:METHOD object|bucket`."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        service, _, name = target.partition(".")
        return f"{service.split('_', 1)[0]}:{name}"
    signed = signer(environ)
    if signed.service == "s3":
        path = str(environ.get("PATH_INFO", "/")).lstrip("/")
        return f"s3:{environ.get('REQUEST_METHOD', 'GET')} {'object' if '/' in path else 'bucket'}"
    action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
    return f"{signed.service or 'unknown'}:{action}"


class _Profiler:
    """cProfile around each request, merged into one stats file rewritten every
    `every` requests (the server is stopped by closing its stdin: no exit hook to trust)."""

    def __init__(self, path: str, every: int = 500) -> None:
        self.path, self.every = path, every
        self.lock = threading.Lock()
        self.stats: pstats.Stats | None = None
        self.seen = 0

    def add(self, profile: cProfile.Profile) -> None:
        with self.lock:
            if self.stats is None:
                self.stats = pstats.Stats(profile)
            else:
                self.stats.add(profile)
            self.seen += 1
            if self.seen % self.every == 0:
                self.stats.dump_stats(self.path)


def time_requests(app: WsgiApp, path: str) -> WsgiApp:
    lock = threading.Lock()
    sink = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the server's life
    profile_path = os.environ.get(ENV_PROFILE)
    profiler = _Profiler(profile_path) if profile_path else None

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = b""
        if signer(environ).service != "s3":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
        wall, cpu = time.perf_counter(), time.thread_time()
        if profiler is None:
            out = list(app(environ, start_response))
        else:
            profile = cProfile.Profile()
            profile.enable()
            try:
                out = list(app(environ, start_response))
            finally:
                profile.disable()
                profiler.add(profile)
        line = {
            "op": operation(environ, body),
            "key": signer(environ).access_key,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.thread_time() - cpu,
            "at": time.time(),
        }
        with lock:
            sink.write(json.dumps(line) + "\n")
            sink.flush()
        return out

    return wrapped
