"""Lambda event source mappings without Docker: a DynamoDB stream pump and an SQS pump.

Each pump is an asyncio task that reads its source, builds the event Lambda would
deliver (`fedasync.local.events`), calls a Lambda-style handler in a thread of its own
within the function's timeout and memory size (`fedasync.local.invoke`), and applies
Lambda's rules: partial batch failures, retries, bisection, at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from fedasync.aws.session import AwsContext, principal_credentials
from fedasync.limits import FunctionLimits, limits_for
from fedasync.local.events import Event, EventLog, LocalLambdaContext, sqs_record, stream_record
from fedasync.local.filters import check_pattern, matches
from fedasync.local.invoke import invoke_limited

log = structlog.get_logger()

Handler = Callable[[Event, Any], dict[str, Any] | None]
FailureSink = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True)
class PumpOptions:
    # Defaults are infra/server.py's mapping settings (stream: batch 10, 5 retries)
    batch_size: int = 10
    max_retries: int = 5  # Lambda's MaximumRetryAttempts, per batch
    bisect_on_error: bool = True  # Lambda's BisectBatchOnFunctionError
    poll_interval_s: float = 0.05
    # Fault injection: deliver every batch twice (at-least-once made certain).
    deliver_twice: bool = False


class _Pump:
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


def _failed_ids(outcome: dict[str, Any] | BaseException | None) -> list[str] | None:
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


class StreamPump(_Pump):
    """Feeds one DynamoDB stream, shard by shard in order, to a stream handler."""

    source = "dynamodb"

    def __init__(
        self,
        aws: AwsContext,
        stream_arn: str,
        handler: Handler,
        *,
        name: str = "aggregate",
        options: PumpOptions | None = None,
        event_log: EventLog | None = None,
        on_failure: FailureSink | None = None,
        filter_pattern: Mapping[str, Any] | None = None,
        limits: FunctionLimits | None = None,
    ) -> None:
        super().__init__(aws, handler, name, options or PumpOptions(), event_log, limits=limits)
        self.stream_arn = stream_arn
        # the mapping's FilterCriteria: records it does not match never reach the handler
        if filter_pattern is not None:
            check_pattern(filter_pattern)
        self._filter = filter_pattern
        self.failed_batches: list[dict[str, Any]] = []
        self._on_failure = on_failure

    async def _run(self) -> None:
        streams = await self.aws.dynamodbstreams()
        described = await streams.describe_stream(StreamArn=self.stream_arn)
        shards = [s["ShardId"] for s in described["StreamDescription"]["Shards"]]
        # moto keeps one shard per table; several would each keep their own order
        async with asyncio.TaskGroup() as group:
            for shard_id in shards:
                group.create_task(self._run_shard(streams, shard_id))

    async def _run_shard(self, streams: Any, shard_id: str) -> None:
        iterator = (
            await streams.get_shard_iterator(
                StreamArn=self.stream_arn,
                ShardId=shard_id,
                ShardIteratorType="TRIM_HORIZON",
            )
        )["ShardIterator"]
        while iterator and not self._stopping.is_set():
            page = await streams.get_records(ShardIterator=iterator, Limit=self.options.batch_size)
            raw = page.get("Records", [])
            records = [stream_record(r, self.stream_arn, self.aws.region) for r in raw]
            if self._filter is not None:
                records = [r for r in records if matches(self._filter, r)]
            if records:
                await self._process(records, shard_id, attempt=0)
            elif not raw:
                await self._pause()
            iterator = page.get("NextShardIterator")

    async def _process(
        self, records: Sequence[dict[str, Any]], shard_id: str, attempt: int
    ) -> None:
        """Deliver until every record is checkpointed or the retries are spent."""
        while records:
            failed = _failed_ids(await self._invoke({"Records": list(records)}))
            if failed == []:
                return
            first = self._first_failed(records, failed)
            if failed is None and self.options.bisect_on_error and len(records) > 1:
                half = len(records) // 2
                await self._process(records[:half], shard_id, attempt)
                await self._process(records[half:], shard_id, attempt)
                return
            records = records[first:]  # records before the first failure are done
            attempt += 1
            if attempt > self.options.max_retries:
                await self._give_up(records, shard_id, attempt)
                return

    @staticmethod
    def _first_failed(records: Sequence[dict[str, Any]], failed: list[str] | None) -> int:
        sequence = [r["dynamodb"]["SequenceNumber"] for r in records]
        if failed is None or any(f not in sequence for f in failed):
            return 0
        return min(sequence.index(f) for f in failed)

    async def _give_up(
        self, records: Sequence[dict[str, Any]], shard_id: str, attempt: int
    ) -> None:
        # The shape of Lambda's on-failure destination record for stream sources
        info = {
            "requestContext": {
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempt,
            },
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": records[-1]["dynamodb"]["SequenceNumber"],
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        self.failed_batches.append(info)
        log.error("pump.batch_discarded", pump=self._name, **info["DDBStreamBatchInfo"])
        if self._on_failure is not None:
            sent = self._on_failure(info)
            if inspect.isawaitable(sent):
                await sent


class QueuePump(_Pump):
    """Feeds an SQS queue to a handler; failed messages are left to become visible again.

    As Lambda does: a failed message is left alone, and comes back once the queue's
    VisibilityTimeout has run out (the control queue's: `CONTROL_VISIBILITY_S`). No
    quicker retry here, or the embedded stack would hide a wait that times out on AWS.
    """

    source = "sqs"

    def __init__(
        self,
        aws: AwsContext,
        queue_url: str,
        handler: Handler,
        *,
        name: str = "control",
        options: PumpOptions | None = None,
        event_log: EventLog | None = None,
        wait_time_s: int = 1,
        limits: FunctionLimits | None = None,
    ) -> None:
        super().__init__(aws, handler, name, options or PumpOptions(), event_log, limits=limits)
        self.queue_url = queue_url
        # short long-polls so that stop() is honoured within a second
        self._wait_time_s = wait_time_s

    async def _run(self) -> None:
        sqs = await self.aws.sqs()
        attrs = await sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        queue_arn = attrs["Attributes"]["QueueArn"]
        while not self._stopping.is_set():
            page = await sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(self.options.batch_size, 10),
                WaitTimeSeconds=self._wait_time_s,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = page.get("Messages", [])
            if messages:
                records = [sqs_record(dict(m), queue_arn, self.aws.region) for m in messages]
                await self._settle(sqs, records)

    async def _settle(self, sqs: Any, records: list[dict[str, Any]]) -> None:
        failed = _failed_ids(await self._invoke({"Records": records}))
        known = {r["messageId"] for r in records}
        if failed is not None and any(f not in known for f in failed):
            failed = None
        for record in records:
            if failed is not None and record["messageId"] not in failed:
                await sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=record["receiptHandle"]
                )
            else:  # left to the queue's VisibilityTimeout (and its redrive to the DLQ)
                log.info("pump.message_left", pump=self._name, message_id=record["messageId"])
