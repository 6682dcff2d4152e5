"""A control message whose handling failed comes back soon, not after the queue's
visibility timeout (360 s, six times the function's timeout as Lambda asks, longer than the
CloseRound and Finalize waits): before reporting it failed, the handler sets its visibility
to a short backoff by receive count (2, 4, 8, 16, 32 s; at MAX_RECEIVE_COUNT it goes to the
DLQ). Lambda's SQS event source has no retry delay of its own: a failed message waits out
its visibility timeout, which is what this shortens. Only a run cut off (timeout, crash)
still waits the whole 360 s.
"""

from __future__ import annotations

import structlog
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from fedasync.server.store import ServerStore
from server_lambdas._runtime import runtime

log = structlog.get_logger()

RETRY_FIRST_S = 2
RETRY_MAX_S = 60


def retry_delay_s(receive_count: int) -> int:
    """The wait before a failed message's next delivery: doubling from 2 s, at most 60."""
    doubled: int = RETRY_FIRST_S * 2 ** (max(1, receive_count) - 1)
    return min(RETRY_MAX_S, doubled)


def retry_soon(record: SQSRecord) -> None:
    """Make a failed message visible again after `retry_delay_s`. Best effort: if this
    fails too, the queue's visibility timeout still brings the message back."""
    try:
        receives = int(record.attributes.approximate_receive_count or 1)
    except ValueError:
        receives = 1
    delay = retry_delay_s(receives)

    async def change(store: ServerStore) -> None:
        sqs = await store.aws.sqs()
        await sqs.change_message_visibility(
            QueueUrl=store.where.require("control_queue_url"),
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=delay,
        )

    try:
        runtime.run(change)
    except Exception as exc:
        log.warning(
            "control.retry_not_scheduled", message_id=record.message_id, error=repr(exc)[:200]
        )
        return
    log.info("control.retry_scheduled", message_id=record.message_id, delay_s=delay)
