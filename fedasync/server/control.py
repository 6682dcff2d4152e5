"""Control messages from the state machine's wait states: open/close rounds, open/finalize tasks.

A control message is acted on only once it is proven to come from the task's execution.

Who can send one: the control queue's policy should admit `sqs:SendMessage` from the
state machine's role alone (IAM is set in `infra/`); the proof below holds even when
another principal, a silo say, is granted it by mistake. Such a sender can put any JSON on
the queue, but it cannot read the queue, the TASK and ROUND items (where the tokens are
kept) or the execution's history.

The proof: the TASK item records the task's execution (`execution_arn`, written from
`$$.Execution.Id` by the state machine's own StartTask state; no silo can write the TASK
item). The handler reads that execution's history from Step Functions and accepts the
message only when one of the execution's `sqs:sendMessage.waitForTaskToken` states sent
exactly this message: the same kind, task, round, reason and task token. Step Functions
alone writes the history and alone mints the tokens, so a message that is not in it was
not sent by the execution. What does not prove it:
- the token against the one stored: CloseRound and Finalize are new wait states with new
  tokens the server has never seen, and open_round / open_task carry the very token the
  server is about to store; a comparison with stored tokens proves nothing for either;
- an execution ARN in the message: the execution is named after its task, so its ARN
  follows from the region, the account, the state machine's name and the task's name;
- SendTaskHeartbeat as a liveness probe: it proves a token is live, not whose, and it is
  refused for wait states without HeartbeatSeconds on the embedded stack.
One GetExecutionHistory call per control message (a few per round, one per async task):
newest first, the match is in the first page.

A message that fails the proof is dropped, not retried (retrying cannot make it genuine),
logged as `control.forged` with its reason, and changes nothing: it is checked before any
write. One for a task that does not exist is dropped the same way (`control.dropped`,
reason `unknown_task`). Tokens are never logged (the handler remembers them as secrets).
"""

from __future__ import annotations

import contextlib
import hmac

import structlog
from structlog.contextvars import bound_contextvars

from fedasync.core.errors import SchemaError
from fedasync.core.items.task import TaskItem
from fedasync.core.messages import ControlMessage
from fedasync.server import async_effects, rounds, secagg_phases
from fedasync.server.finish import finish_task
from fedasync.server.store import ExecutionNotFoundError, ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def on_control(store: ServerStore, msg: ControlMessage) -> None:
    with bound_contextvars(task_name=msg.task_name, round_id=msg.round_id, kind=msg.kind):
        item = await store.get_task(msg.task_name)
        if item is None:
            log.warning(
                "control.dropped",
                reason="unknown_task",
                detail=f"{msg.kind} names task {msg.task_name!r}, which does not exist",
            )
            return
        execution_arn = TaskItem.from_item(msg.task_name, item).execution_arn or ""
        forged = await unproven(store, msg, execution_arn)
        if forged is not None:
            reason, detail = forged
            log.warning("control.forged", reason=reason, detail=detail, execution=execution_arn)
            return
        view = TaskView.from_item(msg.task_name, item)
        if msg.kind == "open_round":
            await rounds.open_round(store, view, _round(msg), msg.task_token)
        elif msg.kind == "check_round":
            await rounds.check_round(store, view, _round(msg), msg.task_token)
        elif msg.kind == "close_round":
            await rounds.close_round(
                store, view, _round(msg), token=msg.task_token, at_deadline=True
            )
        elif msg.kind in ("secagg_phase", "secagg_close"):
            deadline = msg.kind == "secagg_close"
            phase = msg.phase or ""
            await secagg_phases.on_phase(
                store, view, _round(msg), phase, msg.task_token, deadline=deadline
            )
        elif msg.kind == "open_task":
            await async_effects.open_task(store, view, msg.task_token)
        else:
            await finish_task(store, msg.task_name, msg.reason or "timeout", token=msg.task_token)
        log.info("control.handled")


async def unproven(
    store: ServerStore, msg: ControlMessage, execution_arn: str
) -> tuple[str, str] | None:
    """None when the task's execution sent `msg`; else (reason, detail) of why not."""
    what = f"{msg.kind} for task {msg.task_name!r}"
    if not execution_arn:
        return "no_execution", f"{what}: the task records no execution (not started yet)"
    try:
        async with contextlib.aclosing(store.sent_messages(execution_arn)) as sent:
            async for body in sent:
                if _same(msg, body):
                    return None
    except ExecutionNotFoundError as exc:
        return "no_execution", f"{what}: {exc.message}"
    return (
        "not_sent_by_execution",
        f"{what}{_where(msg)} is not a message the task's execution sent "
        "(no wait state of it sent this kind, round and task token)",
    )


def _same(msg: ControlMessage, body: dict[str, object]) -> bool:
    try:
        sent = ControlMessage.parse(body)
    except SchemaError:
        return False
    # the token compared in constant time; the rest is not secret
    same_token = hmac.compare_digest(sent.task_token.encode(), msg.task_token.encode())
    return same_token and sent.model_copy(update={"task_token": msg.task_token}) == msg


def _where(msg: ControlMessage) -> str:
    return f" (round {msg.round_id})" if msg.round_id is not None else ""


def _round(msg: ControlMessage) -> int:
    if msg.round_id is None:
        raise ValueError(f"{msg.kind} for task {msg.task_name!r} has no round_id")
    return msg.round_id
