"""The SQS event source mapping: a queue fed to a handler in batches, a message it fails
left to the queue's visibility timeout (`fedasync.local.pumps` for the rest)."""

from __future__ import annotations

from typing import Any

import structlog

from fedasync.aws.session import AwsContext
from fedasync.limits import FunctionLimits
from fedasync.local.events import EventLog, sqs_record
from fedasync.local.pumps import Handler, Pump, PumpOptions, failed_ids

log = structlog.get_logger()


class QueuePump(Pump):
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
        failed = failed_ids(await self._invoke({"Records": records}))
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
