"""A moto server on 127.0.0.1, run in a thread of this process (the embedded AWS endpoint)."""

from __future__ import annotations

import json
import os
import urllib.request
from types import TracebackType
from typing import Any, Self

import structlog

log = structlog.get_logger()

# moto's Step Functions engine calls the other services (SQS, DynamoDB) with boto3 at
# http://localhost:$MOTO_PORT, so the variable must hold the real port before any
# execution starts. Credentials are dummies: moto accepts any, boto3 wants some.
_LOCAL_ENV_DEFAULTS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
# Without this flag moto only records executions; with it, it runs the ASL.
_MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}}


class LocalMotoServer:
    """moto's ThreadedMotoServer on a loopback port; free port by default.

    moto keeps its state in process-wide backends: two servers in one process serve
    the same resources, so isolate runs by `StackSpec.prefix`, not by server.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._server: Any = None
        self._port: int | None = None
        self._previous_moto_port: str | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the moto server is not running; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> str:
        """Start the server, point MOTO_PORT at it, enable SFN execution; return the URL."""
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=self._host, port=self._requested_port, verbose=False)
        server.start()
        self._server = server
        self._port = int(server.get_host_and_port()[1])
        self._previous_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self._port)
        for name, value in _LOCAL_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self._configure()
        log.info("moto.started", endpoint_url=self.endpoint_url)
        return self.endpoint_url

    def _configure(self) -> None:
        request = urllib.request.Request(  # noqa: S310 - loopback URL built above
            f"{self.endpoint_url}/moto-api/config",
            data=json.dumps(_MOTO_CONFIG).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def reset(self) -> None:
        """Drop every resource (moto's /moto-api/reset); the config survives."""
        request = urllib.request.Request(  # noqa: S310
            f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()
        self._configure()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        log.info("moto.stopped", endpoint_url=self.endpoint_url)
        # moto's backends are process-wide: a server started earlier in this process
        # still serves the same state, and its executions need MOTO_PORT back.
        if self._previous_moto_port is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = self._previous_moto_port
        self._server = None
        self._port = None

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
