"""A SecAgg round's phases on the server: open each (inputs, notice), close it from the
silos' verified answers, answer the phase's wait (docs/secagg.md, "the state machine").

Called from the control handler for `secagg_phase` (a slice of the phase's wait: close
early once every expected silo answered) and `secagg_close` (the phase's deadline: close
with who answered). Tokens are never stored: each wait's own message carries its token,
and the handler answers it at once or lets the slice time out. Every write is once only
(`put_json_once`): a redelivered message finds the phase's decision and answers the same.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.config_secagg import phase_clock
from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.notice import (
    PHASES,
    Phase,
    inbox_key,
    next_phase,
    public_key,
    server_key,
)
from fedasync.server import secagg_close, secagg_decide
from fedasync.server.round_budget import round_callback
from fedasync.server.secagg_io import (
    RoundSetup,
    answered,
    get_decision,
    input_length,
    notice,
    put_json,
    put_json_once,
    put_masked_sum,
    read_answers,
    setup,
)
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()
# a slice's watch for the answers (`_all_answered`)
SLICE_MARGIN_S, MAX_WATCH_S = 0.3, 30.0
FIRST_PAUSE_S, LAST_PAUSE_S = 0.1, 1.0


async def on_phase(
    store: ServerStore, view: TaskView, round_id: int, phase: str, token: str, *, deadline: bool
) -> None:
    if phase not in PHASES:
        log.warning("secagg.dropped", reason="unknown_phase", phase=phase)
        return
    if round_id != view.head_version or view.finished:
        await _answer_done(store, view, round_id, token)
        return
    at: Phase = PHASES[PHASES.index(phase)]
    if at != "unmask":  # closed already (a slice whose answer came after its token timed
        # out, or a redelivery): answered from the decision, nothing else read or written
        decided = await _decision(store, view, round_id, at)
        if decided is not None:
            await store.send_success(token, _outcome(view, round_id, at, decided))
            return
    opened = await put_json_once(
        store, server_key(view.task_name, round_id, "round"), {"graph_seed": os.urandom(16).hex()}
    )
    s = setup(view, round_id, bytes.fromhex(opened["graph_seed"]))
    before = (
        await _decision(store, view, round_id, PHASES[PHASES.index(at) - 1])
        if at != PHASES[0]
        else None
    )
    if at != PHASES[0] and before is None:
        log.warning("secagg.dropped", reason="phase_out_of_order", phase=at)
        return
    expected = list(before["members"]) if before is not None else list(s.silos)
    if before is None:  # the round's item, as `open_round` keeps it (its result goes there)
        await store.update(
            store.update_op(
                view.task_name,
                keys.round_sk(round_id),
                {"round_id": round_id, "secure_aggregation": True},
                condition="attribute_not_exists(#closed)",
            )
        )
    await _open(store, view, s, phase=at, before=before, expected=expected)
    # probe first: the answers (ten masked inputs are 50 MB) are read once, when all are in
    if not deadline and not await _all_answered(store, view, s, at, expected):
        return  # the slice times out; the next one (or the deadline) looks again
    answers = await read_answers(store, view, s, at, expected)
    if at == "unmask":
        result = await secagg_close.close_round(store, view, s, answers, round_id)
        await store.send_success(token, round_callback(result))
        return
    decided = await _close(store, view, s, phase=at, answers=answers, before=before)
    await store.send_success(token, _outcome(view, round_id, at, decided))


async def _all_answered(
    store: ServerStore, view: TaskView, s: RoundSetup, phase: Phase, expected: list[str]
) -> bool:
    """Whether every expected silo answered, watched for most of this slice's wait: the
    phase closes within a poll of its last answer, not at the next slice. The probes
    back off (0.1 s to 1 s) and only look for the missing answers; the watch ends
    `SLICE_MARGIN_S` before the slice times out (its token would be spent) and within
    `MAX_WATCH_S`, well inside the control function's timeout."""
    sa = view.cfg.secure_aggregation
    check_s = phase_clock(sa, view.cfg.round_check_s)[0] if sa is not None else 0
    until = time.monotonic() + min(check_s - SLICE_MARGIN_S, MAX_WATCH_S)
    missing, pause = set(expected), FIRST_PAUSE_S
    while True:
        missing -= await answered(store, view, s, phase, sorted(missing))
        if not missing:
            return True
        if time.monotonic() + pause > until:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, LAST_PAUSE_S)


async def _decision(
    store: ServerStore, view: TaskView, round_id: int, phase: Phase
) -> dict[str, Any] | None:
    got = await get_decision(store, view.task_name, round_id, f"closed-{phase}")
    return got if isinstance(got, dict) else None


async def _open(
    store: ServerStore,
    view: TaskView,
    s: RoundSetup,
    *,
    phase: Phase,
    before: dict[str, Any] | None,
    expected: list[str],
) -> None:
    """The phase's inputs, then its notice, once (a retry may publish again: silos answer
    a notice idempotently)."""
    name, round_id = view.task_name, s.ctx.round_id
    if await get_decision(store, name, round_id, f"opened-{phase}") is not None:
        return
    if before is not None:
        if phase == "masked_input":
            await asyncio.gather(
                *(
                    put_json(store, inbox_key(name, round_id, client_id), {"messages": sealed})
                    for client_id, sealed in before["inboxes"].items()
                )
            )
        public = {k: v for k, v in before.items() if k in ("members", "adverts", "signatures")}
        await put_json(store, public_key(name, round_id, phase), public)
    await store.publish(notice(view, s, phase, expected), tuple(expected))
    await put_json_once(store, server_key(name, round_id, f"opened-{phase}"), {"at": phase})
    log.info("secagg.phase_opened", phase=phase, expected=len(expected))


async def _close(
    store: ServerStore,
    view: TaskView,
    s: RoundSetup,
    *,
    phase: Phase,
    answers: secagg_decide.Answers,
    before: dict[str, Any] | None,
) -> dict[str, Any]:
    decided = await _decision(store, view, s.ctx.round_id, phase)
    if decided is not None:
        return decided
    try:
        if phase == "advertise_keys":
            fresh = secagg_decide.advertise_keys(s, answers)
        elif phase == "share_keys" and before is not None:
            fresh = secagg_decide.share_keys(s, answers, before)
        elif phase == "masked_input" and before is not None:
            fresh, total = secagg_decide.masked_input(
                s, answers, before["members"], input_length(view)
            )
            fresh["masked_sum"] = await put_masked_sum(store, view.task_name, s, total)
        elif before is not None:
            fresh = secagg_decide.consistency(s, answers, before["members"])
        else:
            raise ValueError(f"phase {phase} has no earlier decision")
    except SecAggError as exc:
        fresh = {
            "cause": secagg_decide.failed_cause(view.task_name, s.ctx.round_id, phase, exc),
            "members": [],
        }
    key = server_key(view.task_name, s.ctx.round_id, f"closed-{phase}")
    return await put_json_once(store, key, fresh)


def _outcome(
    view: TaskView, round_id: int, phase: Phase, decided: dict[str, Any]
) -> dict[str, Any]:
    if decided.get("cause"):
        return {"closed": False, "round_id": round_id, "cause": decided["cause"]}
    log.info("secagg.phase_closed", phase=phase, members=len(decided["members"]))
    return {
        "next_phase": next_phase(phase),
        "round_id": round_id,
        "phase": phase,
        "members": len(decided["members"]),
    }


async def _answer_done(store: ServerStore, view: TaskView, round_id: int, token: str) -> None:
    """A message for a round that is over (a redelivery): answer with its result."""
    item = await store.get_item(view.task_name, keys.round_sk(round_id)) or {}
    if item.get("closed") and item.get("result"):
        await store.send_success(token, round_callback(dict(item["result"])))
    else:
        log.warning("secagg.dropped", reason="not_the_open_round", head_version=view.head_version)
