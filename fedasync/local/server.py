"""A moto server on 127.0.0.1 in a child process (the embedded AWS endpoint).

moto is a pure-Python server: every request it answers costs CPU under its own GIL. In
a child process it runs on its own core instead of competing with the clients and
handlers that call it (measured: sync rounds ~15-20 % shorter on a 2-core machine), and
each server has its own state, as separate endpoints do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from types import TracebackType
from typing import IO, Self

import structlog

from fedasync.aws.session import Credentials, use_by_default
from fedasync.local.moto_iam import (
    ADMIN_HEADER,
    ENV_ADMIN_KEY,
    ENV_ADMIN_TOKEN,
    ENV_ENFORCE_IAM,
)

log = structlog.get_logger()

# Credentials are dummies: moto accepts any, boto3 wants some.
_LOCAL_ENV_DEFAULTS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
# Without this flag moto only records executions; with it, it runs the ASL.
_MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}}
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class MotoServerError(RuntimeError):
    """The moto server process did not start, or stopped on its own."""


@functools.cache
def _process_admin() -> Credentials:
    """One stack-admin key per process, shared by every server it starts: whatever signs
    from the environment (provisioning, test oracles) then works with each of them.
    ("AKIARZPUZDIK": how moto's key ids begin in account 123456789012.)"""
    return Credentials("AKIARZPUZDIK" + secrets.token_hex(4).upper(), secrets.token_urlsafe(30))


class LocalMotoServer:
    """moto's server on a loopback port (free by default), in a child process.

    The child serves until `stop()` or until this process goes away (it watches the
    pipe to its parent), so a crashed parent never leaves a server behind.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, enforce_iam: bool | None = None
    ) -> None:
        """`enforce_iam`: moto's IAM access control on (every request signed by a known
        key, allowed by its principal's policies); None: on unless `FEDASYNC_ENFORCE_IAM=0`."""
        self._host = host
        self.enforce_iam = (
            os.environ.get(ENV_ENFORCE_IAM, "1") != "0" if enforce_iam is None else enforce_iam
        )
        # The stack admin's key (provisioning, test oracles): only this process holds it.
        self.admin_credentials: Credentials | None = None
        self._requested_port = port
        self._process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        # Only this process knows it: the child's /moto-api/* answers no one else.
        self._admin_token = secrets.token_urlsafe(24)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the moto server is not running; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> str:
        """Start the server process, enable SFN execution; return the URL."""
        for name, value in _LOCAL_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedasync.local.moto_process",
                self._host,
                str(self._requested_port),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                ENV_ADMIN_TOKEN: self._admin_token,
                ENV_ENFORCE_IAM: "1" if self.enforce_iam else "0",
                ENV_ADMIN_KEY: ":".join(
                    (_process_admin().access_key_id, _process_admin().secret_access_key)
                ),
            },
        )
        self._process = process
        try:
            self._port, self.admin_credentials = _read_port(
                process, self._host, self._requested_port
            )
            self._configure()
            if self.enforce_iam and self.admin_credentials is not None:
                # this process is the stack's own: what signs without a principal's
                # key (provisioning, test oracles) signs as the admin
                use_by_default(self.admin_credentials)
        except BaseException:
            self.stop()
            raise
        log.info("moto.started", endpoint_url=self.endpoint_url, pid=process.pid)
        return self.endpoint_url

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 - loopback URL built above
            f"{self.endpoint_url}{path}",
            data=body,
            headers={"Content-Type": "application/json", ADMIN_HEADER: self._admin_token},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def _configure(self) -> None:
        self._post("/moto-api/config", json.dumps(_MOTO_CONFIG).encode())

    def reset(self) -> None:
        """Drop every resource (moto's /moto-api/reset); the config survives."""
        self._post("/moto-api/reset", b"")
        self._configure()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        url = f"http://{self._host}:{self._port}" if self._port is not None else None
        self._port = None
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()  # the child's cue to shut down
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.info("moto.stopped", endpoint_url=url, returncode=process.returncode)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _read_port(
    process: subprocess.Popen[str], host: str, requested: int
) -> tuple[int, Credentials]:
    """The child prints its bound port and the admin's key once it serves (or exits if
    it cannot bind)."""
    import selectors

    stdout: IO[str] | None = process.stdout
    if stdout is None:
        raise MotoServerError("the moto server process has no stdout pipe")
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(_START_TIMEOUT_S):
            raise MotoServerError(
                f"the moto server on {host}:{requested or '(any port)'} did not start "
                f"within {_START_TIMEOUT_S:.0f} s"
            )
    line = stdout.readline().strip()
    try:
        started = json.loads(line)
        return int(started["port"]), Credentials(*started["admin"])
    except (ValueError, KeyError, TypeError):
        code = process.poll()
        raise MotoServerError(
            f"the moto server on {host}:{requested or '(any port)'} failed to start"
            + (f" (exit code {code}; see its error above)" if code is not None else "")
        ) from None
