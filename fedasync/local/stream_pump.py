"""The DynamoDB stream's event source mapping: shard by shard in order, with Lambda's
retries, bisection and on-failure destination (`fedasync.local.pumps` for the rest)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from fedasync.aws.session import AwsContext
from fedasync.limits import FunctionLimits
from fedasync.local.events import EventLog, stream_record
from fedasync.local.filters import check_pattern, matches
from fedasync.local.pumps import Handler, Pump, PumpOptions, failed_ids

log = structlog.get_logger()

FailureSink = Callable[[dict[str, Any]], Awaitable[None] | None]


class StreamPump(Pump):
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
            failed = failed_ids(await self._invoke({"Records": list(records)}))
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
