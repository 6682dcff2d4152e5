"""Lambda event source mappings without Docker: what the DynamoDB stream pump
(`fedasync.local.stream_pump`) and the SQS pump (`fedasync.local.queue_pump`) share.

Each pump is an asyncio task that reads its source, builds the event Lambda would
deliver (`fedasync.local.events`), calls a Lambda-style handler in a thread of its own
within the function's timeout and memory size (`fedasync.local.invoke`), and applies
Lambda's rules: partial batch failures, retries, bisection, at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from fedasync.aws.session import AwsContext, principal_credentials
from fedasync.limits import FunctionLimits, limits_for
from fedasync.local.events import Event, EventLog, LocalLambdaContext
from fedasync.local.invoke import invoke_limited

log = structlog.get_logger()

Handler = Callable[[Event, Any], dict[str, Any] | None]


@dataclass(frozen=True)
class PumpOptions:
    # Defaults are infra/server.py's mapping settings (stream: batch 10, 5 retries)
    batch_size: int = 10
    max_retries: int = 5  # Lambda's MaximumRetryAttempts, per batch
    bisect_on_error: bool = True  # Lambda's BisectBatchOnFunctionError
    poll_interval_s: float = 0.05
    # Fault injection: deliver every batch twice (at-least-once made certain).
    deliver_twice: bool = False


class Pump:
    """Shared lifecycle: start as a task, stop cleanly, invoke the handler off the loop."""

    source = "pump"

    def __init__(
        self,
        aws: AwsContext,
        handler: Handler,
        name: str,
        options: PumpOptions,
        event_log: EventLog | None,
        *,
        limits: FunctionLimits | None = None,
    ) -> None:
        # the endpoint, region and credentials; the pump opens its own clients
        self._where = aws
        self._handler = handler
        self._name = name
        # the deployed function's timeout and memory size (fedasync.limits), unless a
        # test gives its own
        self.limits = limits if limits is not None else limits_for(name)
        self.options = options
        self.event_log = event_log if event_log is not None else EventLog()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._own_aws: AwsContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def aws(self) -> AwsContext:
        """The pump's own clients, on its own loop."""
        if self._own_aws is None:
            raise RuntimeError(f"pump {self._name!r} is not running")
        return self._own_aws

    def start(self) -> None:
        """Run on a thread and event loop of its own, as Lambda's pollers run apart from
        whatever writes to their sources: a busy caller loop (the demo's silos share one)
        does not delay the pump's reads, and its reads do not load the caller's loop. The
        handler runs on that loop's own worker threads, shared with nothing else."""
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name=f"pump-loop-{self._name}", daemon=True
        )
        self._thread.start()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The event source mapping reads as the function's role, and the handler runs as
        # it: every task and worker thread of this loop inherits these credentials.
        principal_credentials.set(self._where.credentials)
        try:
            where = self._where
            async with AwsContext(where.endpoint_url, where.region, where.credentials) as aws:
                self._own_aws = aws
                self._task = asyncio.create_task(self._run(), name=f"pump:{self._name}")
                self._ready.set()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    log.exception("pump.crashed", pump=self._name)
        finally:
            self._ready.set()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let the batch in flight finish (up to grace_s), then cancel the pump."""
        thread = self._thread
        if thread is None:
            return
        await asyncio.to_thread(self._ready.wait, grace_s)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stopping.set)
        await asyncio.to_thread(thread.join, grace_s)
        if thread.is_alive() and loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._task.cancel)
            await asyncio.to_thread(thread.join, grace_s)
        log.info("pump.stopped", pump=self._name)

    async def _run(self) -> None:
        raise NotImplementedError

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.options.poll_interval_s)

    async def _invoke(self, event: Event) -> dict[str, Any] | BaseException | None:
        """Deliver one event (twice under fault injection); return the last outcome."""
        outcome: dict[str, Any] | BaseException | None = None
        for _ in range(2 if self.options.deliver_twice else 1):
            await asyncio.to_thread(self.event_log.append, self.source, event)
            context = LocalLambdaContext(
                function_name=self._name,
                memory_limit_in_mb=self.limits.memory_mb,
                timeout_s=self.limits.timeout_s,
            )
            try:
                outcome = await invoke_limited(
                    self._handler, event, context, self.limits, function=self._name
                )
            except Exception as error:  # a handler crash is a failed batch, as in Lambda
                log.warning("pump.handler_failed", pump=self._name, error=repr(error))
                outcome = error
        log.info("pump.batch_delivered", pump=self._name, records=len(event["Records"]))
        return outcome


def failed_ids(outcome: dict[str, Any] | BaseException | None) -> list[str] | None:
    """Item ids the handler reported as failed; None means the whole batch failed."""
    if isinstance(outcome, BaseException):
        return None
    if not outcome:
        return []
    failures = outcome.get("batchItemFailures") or []
    try:
        return [str(f["itemIdentifier"]) for f in failures]
    except (TypeError, KeyError):
        return None  # a malformed answer fails the whole batch, as Lambda does
