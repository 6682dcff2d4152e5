"""Long-poll the client's own queue and sort each notice into the inbox.

A message that is not a notice this build understands is logged and left alone: it
becomes visible again, and after the queue's maxReceiveCount SQS moves it to the
dead-letter queue for a human. A poll that fails (network, throttling) is retried
with backoff; the poller never ends the run.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from client.inbox import Offer
from client.state import RunState
from fedasync.aws.queues import ReceivedMessage
from fedasync.aws.session import denial
from fedasync.core.errors import SchemaError
from fedasync.core.messages import GlobalModelNotice
from fedasync.core.secagg.notice import SecAggNotice

log = structlog.get_logger()

_MAX_BACKOFF_S = 20.0


async def poll_loop(state: RunState) -> None:
    failures = 0
    while True:
        try:
            messages = await state.ports.receive()
        except (ClientError, BotoCoreError, OSError) as exc:
            if isinstance(exc, ClientError) and denial(exc) is not None:
                # a refusal does not heal by waiting: end the run, saying what was refused
                log.error("client.refused", operation=exc.operation_name, reason=denial(exc))
                raise
            failures += 1
            delay = min(_MAX_BACKOFF_S, 0.5 * 2**failures)
            log.warning("client.poll_failed", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            continue
        failures = 0
        for message in messages:
            await on_message(state, message)


async def on_message(state: RunState, message: ReceivedMessage) -> None:
    if _kind(message.body) == "secagg_phase":
        await _on_secagg(state, message)
        return
    try:
        notice = GlobalModelNotice.parse(message.body)
    except SchemaError as exc:
        state.report.rejected_notices += 1
        log.warning(
            "client.notice_rejected",
            message_id=message.message_id,
            receive_count=message.receive_count,
            error=exc.message,
        )
        return
    if notice.task_name != state.cfg.task_name:  # another run of this silo will take it
        log.info("client.notice_other_task", notice_task=notice.task_name)
        return
    before = state.inbox.incarnation
    offer = state.inbox.offer(notice, message.receipt_handle)
    if before is not None and state.inbox.incarnation != before:
        log.warning(
            "client.task_recreated",
            detail=f"task {notice.task_name!r} was created again (a new stack?); its "
            "versions start over and this silo serves the new one",
        )
    fields = {"notice_version": notice.version, "final": notice.final}
    if offer is Offer.DONE:
        await state.ports.delete([message.receipt_handle])
        log.info("client.notice_already_handled", **fields)
    elif offer is Offer.JOINED:
        state.report.duplicates += 1
        log.info("client.notice_duplicate", **fields)
    else:
        log.info("client.notice_received", **fields)


def _kind(body: str) -> object:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


async def _on_secagg(state: RunState, message: ReceivedMessage) -> None:
    """A SecAgg phase notice goes to the run's SecAgg part (client/secagg_run.py)."""
    try:
        notice = SecAggNotice.parse(message.body)
    except SchemaError as exc:
        state.report.rejected_notices += 1
        log.warning("client.notice_rejected", message_id=message.message_id, error=exc.message)
        return
    if notice.task_name != state.cfg.task_name:
        log.info("client.notice_other_task", notice_task=notice.task_name)
        return
    if message.receipt_handle in state.secagg_receipts:
        return
    log.info("client.secagg_notice", phase=notice.phase, round_id=notice.round_id)
    # kept invisible by the heartbeat until client/secagg_run.py has answered it
    state.secagg_receipts.add(message.receipt_handle)
    await state.secagg_notices.put((notice, message.receipt_handle))
