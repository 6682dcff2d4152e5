"""SQS port: the client queues and the control queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code

log = structlog.get_logger()

# A receipt handle goes stale when its visibility timeout lapses and the message is
# received again; deleting or extending it then is a normal race, not a crash.
_STALE_RECEIPT_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidParameterValue",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)


# How SQS says a queue does not exist (query and JSON protocols spell it differently)
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Mapping[str, str] = field(default_factory=dict)


class Queues(Protocol):
    async def url_of(self, name: str) -> str | None: ...
    async def send(self, queue_url: str, body: str, *, delay_s: int = 0) -> str: ...

    async def receive(
        self,
        queue_url: str,
        *,
        max_messages: int = 1,
        wait_s: int = 20,
        visibility_s: int | None = None,
    ) -> list[ReceivedMessage]: ...

    async def delete(self, queue_url: str, receipt_handle: str) -> bool: ...

    async def change_visibility(
        self, queue_url: str, receipt_handle: str, timeout_s: int
    ) -> bool: ...


def _message(raw: Mapping[str, Any]) -> ReceivedMessage:
    attributes = {str(k): str(v) for k, v in raw.get("Attributes", {}).items()}
    return ReceivedMessage(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw["Body"],
        receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
        attributes=attributes,
        message_attributes={
            name: str(value.get("StringValue", ""))
            for name, value in raw.get("MessageAttributes", {}).items()
        },
    )


class SqsQueues:
    """`Queues` over aioboto3's SQS client."""

    def __init__(self, aws: AwsContext) -> None:
        self._aws = aws

    async def url_of(self, name: str) -> str | None:
        """The URL of the queue named `name`; None if there is none."""
        sqs = await self._aws.sqs()
        try:
            return (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        except ClientError as error:
            if error_code(error) in MISSING_QUEUE_CODES:
                return None
            raise

    async def send(self, queue_url: str, body: str, *, delay_s: int = 0) -> str:
        sqs = await self._aws.sqs()
        sent = await sqs.send_message(QueueUrl=queue_url, MessageBody=body, DelaySeconds=delay_s)
        return sent["MessageId"]

    async def receive(
        self,
        queue_url: str,
        *,
        max_messages: int = 1,
        wait_s: int = 20,
        visibility_s: int | None = None,
    ) -> list[ReceivedMessage]:
        """Long-poll up to `wait_s` seconds (20 at most) for up to `max_messages` (10 at most)."""
        sqs = await self._aws.sqs()
        extra: dict[str, Any] = {}
        if visibility_s is not None:
            extra["VisibilityTimeout"] = visibility_s
        page = await sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max(1, min(max_messages, 10)),
            WaitTimeSeconds=max(0, min(wait_s, 20)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            **extra,
        )
        return [_message(m) for m in page.get("Messages", [])]

    async def delete(self, queue_url: str, receipt_handle: str) -> bool:
        """True if deleted; False if the receipt had gone stale (the message lives on)."""
        sqs = await self._aws.sqs()
        try:
            await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)
        except ClientError as error:
            if error_code(error) not in _STALE_RECEIPT_CODES:
                raise
            log.warning("queue.stale_receipt", action="delete", code=error_code(error))
            return False
        return True

    async def change_visibility(self, queue_url: str, receipt_handle: str, timeout_s: int) -> bool:
        """Extend (or end, with 0) the message's invisibility; False if the receipt is stale."""
        sqs = await self._aws.sqs()
        try:
            await sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout_s
            )
        except ClientError as error:
            if error_code(error) not in _STALE_RECEIPT_CODES:
                raise
            log.warning("queue.stale_receipt", action="change_visibility", code=error_code(error))
            return False
        return True
