"""Control queue -> open/close rounds, open/finalize tasks; a failed one is retried soon
(`server_lambdas/_retry.py`), not after the queue's visibility timeout."""

from __future__ import annotations

from typing import Any

import structlog
from aws_lambda_powertools.utilities import batch
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from fedasync import logs
from fedasync.core.errors import FedAsyncError
from fedasync.core.messages import ControlMessage
from fedasync.server.control import on_control
from server_lambdas._retry import retry_soon
from server_lambdas._runtime import runtime

processor = batch.BatchProcessor(event_type=batch.EventType.SQS)
log = structlog.get_logger()


def record_handler(record: SQSRecord) -> None:
    try:
        msg = ControlMessage.parse(record.body)
    except FedAsyncError as exc:
        # Retrying cannot fix a malformed message: log it and let it go (it is not ours).
        log.error(
            "control.rejected", reason=exc.reason, detail=exc.message, message_id=record.message_id
        )
        return
    logs.remember_secret(msg.task_token)
    try:
        runtime.run(lambda store: on_control(store, msg))
    except Exception:
        log.exception(
            "control.failed", task_name=msg.task_name, kind=msg.kind, round_id=msg.round_id
        )
        retry_soon(record)
        raise


def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return batch.process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
