"""A batch processor that stops at the first failure, as Powertools' SqsFifoPartialProcessor
does for SQS FIFO: a task's updates must apply in stream order, and Lambda retries a
DynamoDB stream batch from its first reported failure, so every record after a failed
one is reported failed, unprocessed."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, FailureResponse


class StreamOrderError(Exception):
    """A previous record of this batch failed; this one is kept for the retry, in order."""


class StreamOrderProcessor(BatchProcessor):
    circuit_breaker_exc = (
        StreamOrderError,
        StreamOrderError("an earlier record of this batch failed; kept for retry in order"),
        None,
    )

    def __init__(self) -> None:
        super().__init__(event_type=EventType.DynamoDBStreams)

    def _process_record(self, record: dict[str, Any]) -> Any:
        if self.fail_messages:
            batch_record = self._to_batch_type(record, event_type=self.event_type)
            return self.failure_handler(batch_record, self.circuit_breaker_exc)
        return super()._process_record(record)

    async def _async_process_record(self, record: dict[str, Any]) -> FailureResponse:
        raise NotImplementedError
