"""The embedded stack: moto + the CDK stack's resources + pumps feeding the handlers."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import structlog

from fedasync.aws.session import AwsContext, Credentials
from fedasync.deployment import Deployment
from fedasync.limits import FunctionLimits, limits_for
from fedasync.local.events import EventLog
from fedasync.local.provision import provision
from fedasync.local.pumps import Handler, PumpOptions
from fedasync.local.queue_pump import QueuePump
from fedasync.local.server import LocalMotoServer
from fedasync.local.stream_pump import StreamPump
from fedasync.resources import AGGREGATE_HANDLER, AGGREGATE_STREAM_FILTER, CONTROL_HANDLER

log = structlog.get_logger()

CONTROL_BATCH_SIZE = 5  # infra/server.py's SqsEventSource batch_size


def load_handler(target: Handler | str) -> Handler:
    """A handler given as a function, or as Lambda's `package.module.function` path."""
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.rpartition(".")
    if not module_name:
        raise ValueError(f"handler {target!r} must be a dotted path 'module.function'")
    return cast(Handler, getattr(importlib.import_module(module_name), attribute))


class EmbeddedStack:
    """`async with EmbeddedStack(spec) as stack:` runs a whole server stack in-process.

    Starts a moto server unless `endpoint_url` names a running one, provisions `spec`,
    exports the handlers' environment, and pumps the table's stream into the aggregate
    handler and the control queue into the control handler (None: no pump).
    """

    def __init__(
        self,
        spec: Deployment | None = None,
        *,
        endpoint_url: str | None = None,
        aggregate_handler: Handler | str | None = AGGREGATE_HANDLER,
        control_handler: Handler | str | None = CONTROL_HANDLER,
        pump_options: PumpOptions | None = None,
        event_log_path: Path | None = None,
        enforce_iam: bool | None = None,
        admin_credentials: Credentials | None = None,
        function_limits: Mapping[str, FunctionLimits] | None = None,
    ) -> None:
        self.spec = spec or Deployment()
        self._endpoint_url = endpoint_url
        self._handlers = {"aggregate": aggregate_handler, "control": control_handler}
        self._options = pump_options or PumpOptions()
        # each function's deployed timeout and memory size; a test may give tighter ones
        self._limits = {
            name: (function_limits or {}).get(name, limits_for(name))
            for name in ("aggregate", "control")
        }
        self.event_log = EventLog(event_log_path)
        self._server: LocalMotoServer | None = None
        self._exit = AsyncExitStack()
        self._saved_env: dict[str, str | None] = {}
        self.stream_pump: StreamPump | None = None
        self.control_pump: QueuePump | None = None
        self._endpoints: Deployment | None = None
        self._principal_aws: dict[str, AwsContext] = {}
        self._enforce_iam = enforce_iam
        # the stack's own identity (provisioning): the server's admin when it is ours
        self._admin = admin_credentials
        self.aws = AwsContext(endpoint_url, self.spec.region, admin_credentials)

    @property
    def endpoints(self) -> Deployment:
        if self._endpoints is None:
            raise RuntimeError("the embedded stack is not running; use `async with`")
        return self._endpoints

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        if self._endpoint_url is None:
            self._server = LocalMotoServer(enforce_iam=self._enforce_iam)
            self._endpoint_url = await asyncio.to_thread(self._server.start)
            self._admin = self._admin or self._server.admin_credentials
            self.aws = AwsContext(self._endpoint_url, self.spec.region, self._admin)
        await self._exit.enter_async_context(self.aws)
        self._endpoints = await provision(self.aws, self.spec)
        self._export_env(self._endpoints.handler_env())
        for principal in self._endpoints.principals:
            self._principal_aws[principal] = await self._exit.enter_async_context(
                self._as(principal)
            )
        aggregate, control = self._handlers["aggregate"], self._handlers["control"]
        if aggregate is not None:
            self.stream_pump = StreamPump(
                self._as("aggregate"),
                self._endpoints.require("stream_arn"),
                load_handler(aggregate),
                options=self._options,
                event_log=self.event_log,
                on_failure=self._failure_sink(),
                filter_pattern=AGGREGATE_STREAM_FILTER,
                limits=self._limits["aggregate"],
            )
            self.stream_pump.start()
        if control is not None:
            self.control_pump = QueuePump(
                self._as("control"),
                self._endpoints.require("control_queue_url"),
                load_handler(control),
                options=replace(self._options, batch_size=CONTROL_BATCH_SIZE),
                event_log=self.event_log,
                limits=self._limits["control"],
            )
            self.control_pump.start()
        log.info("stack.started", endpoint_url=self._endpoint_url, prefix=self.spec.prefix)

    def credentials(self, principal: str) -> Credentials:
        """A principal's own access key (`client:<id>`, `aggregate`, `operator`, ...)."""
        try:
            return self.endpoints.principals[principal]
        except KeyError:
            known = ", ".join(sorted(self.endpoints.principals))
            raise KeyError(f"no principal {principal!r} in this stack (known: {known})") from None

    def _as(self, principal: str) -> AwsContext:
        return AwsContext(self._endpoint_url, self.spec.region, self.credentials(principal))

    def principal_aws(self, principal: str) -> AwsContext:
        """An open AwsContext (on this loop) signing as `principal`, closed with the stack."""
        self.credentials(principal)  # a clear error for an unknown principal
        return self._principal_aws[principal]

    async def _stop(self) -> None:
        for pump in (self.stream_pump, self.control_pump):
            if pump is not None:
                await pump.stop()
        await self._exit.aclose()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    def _failure_sink(self) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """The pump runs on its own loop; the stack's clients live on this one."""
        loop = asyncio.get_running_loop()

        def sink(info: dict[str, Any]) -> Awaitable[None]:
            return asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._send_failure(info), loop)
            )

        return sink

    async def _send_failure(self, info: dict[str, Any]) -> None:
        # As Lambda's on-failure destination does: the batch's coordinates, not its records
        sqs = await self.aws.sqs()
        await sqs.send_message(
            QueueUrl=self.endpoints.require("aggregate_failures_url"), MessageBody=json.dumps(info)
        )

    def _export_env(self, env: dict[str, str]) -> None:
        # Handlers run in this process (worker threads) and read their config from the
        # environment, as on Lambda; the previous values come back on exit.
        for name, value in env.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
