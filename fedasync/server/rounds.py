"""Sync mode: open a round, accept its updates, close it with FedAvg (or fail it)."""

from __future__ import annotations

import time
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.decisions import (
    RoundOutcome,
    close_outcome,
    examples_outcome,
    parse_update_item,
    round_complete,
)
from fedasync.core.errors import GlobalRefusedError
from fedasync.core.items import round as r
from fedasync.core.items import task as t
from fedasync.core.items.expressions import ITEM_EXISTS, absent, all_of, equals
from fedasync.core.items.round import RoundItem, RoundResult
from fedasync.core.items.task import TaskItem
from fedasync.core.items.verdict import VERDICT_ATTRIBUTES, Verdict
from fedasync.server import refused
from fedasync.server.finish import finish_task
from fedasync.server.members import Tally, claim_members, dead_undecided, may_close
from fedasync.server.round_budget import budget_spent, round_callback, spent_budget
from fedasync.server.round_fold import new_version_of
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def open_round(store: ServerStore, view: TaskView, round_id: int, token: str) -> None:
    """Keep the round's token server-side, then tell the clients the round is open."""
    if round_id != view.head_version:
        log.warning("round.open_ignored", round_id=round_id, head_version=view.head_version)
        return
    op = store.update_op(
        view.task_name,
        keys.round_sk(round_id),
        r.opened(token, round_id, time.time()),
        condition=absent(r.CLOSED),
    )
    if not await store.update(op):
        log.info("round.already_closed", round_id=round_id)
        return
    await store.publish(view.notice(round_id), view.cfg.clients)
    log.info("round.opened", round_id=round_id)
    if view.attempt > 1:
        # resumed: the round may have been complete when the last attempt ended, and then
        # no new update would come to close it before its deadline
        await maybe_complete(store, view, round_id)


def is_sealed(round_item: dict[str, Any]) -> bool:
    """The round takes no more updates: its close has begun (or is done)."""
    return RoundItem.from_item(round_item).is_sealed


async def maybe_complete(
    store: ServerStore, view: TaskView, round_id: int, *, tally: Tally | None = None
) -> None:
    """Close the round once every expected client is decided, or once every live one is
    and the quorum is met (the dead are dropped).

    `tally`: after a stream run's verdicts, the round item's count of its clients' word
    with them (`members.Tally`): the round's items are queried only when it says the
    round may close, so a run costs O(1) reads in the round's size. None (a check, a
    resume): query now. Either way the close decides on the queried verdicts alone."""
    if tally is not None and not await may_close(store, view, tally):
        return
    items = await store.query_prefix(view.task_name, f"{keys.UPDATE_PREFIX}{round_id:08d}#")
    decided = {str(s.client_id) for i in items if (s := Verdict.from_item(i)).settles}
    dropped: list[str] = []
    if not round_complete(view.cfg, decided):
        dropped = await dead_undecided(store, view, items, decided)
        if not dropped:
            return
    # every expected client is decided (or dead), so these items are the round's final
    # word: the members claimed from them are what a fresh query would give
    await close_round(
        store,
        view,
        round_id,
        token=None,
        at_deadline=False,
        items=items,
        dropped=dropped,
    )


async def check_round(store: ServerStore, view: TaskView, round_id: int, token: str) -> None:
    """A check of the open round (`check_round`, one per `round_check_s` of its wait): keep
    the wait's new token, then close the round if every live silo is decided. A round
    closed already answers with its result."""
    op = store.update_op(
        view.task_name,
        keys.round_sk(round_id),
        r.checked(token),
        condition=all_of(ITEM_EXISTS, absent(r.CLOSED)),
    )
    if not await store.update(op):
        round_item = await store.get_item(view.task_name, keys.round_sk(round_id))
        if RoundItem.from_item(round_item).closed:
            await close_round(store, view, round_id, token=token, at_deadline=False)
        else:
            log.warning("round.check_ignored", round_id=round_id, reason="not_opened")
        return
    if round_id == view.head_version and not view.finished:
        await maybe_complete(store, view, round_id)


async def close_round(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    *,
    token: str | None,
    at_deadline: bool,
    items: list[dict[str, Any]] | None = None,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """Aggregate the round's accepted updates into version round_id + 1, or fail it.

    `token`: the round's callback token (None: the one kept on the round item). `items`:
    the round's update items when the caller has just queried them (`maybe_complete`).
    `dropped`: the dead clients the round closes without (recorded in its result)."""
    round_item = RoundItem.from_item(await store.get_item(view.task_name, keys.round_sk(round_id)))
    members: list[str] = []
    if not round_item.closed:
        members, current = await claim_members(store, view, round_id, items)
        if current is not None:  # claimed by an earlier try: the round as it is now
            round_item, items = RoundItem.from_item(current), None
    token = token or round_item.token
    if round_item.closed:
        result = round_item.result_of(round_id)
        await _finish_if_last(store, view, result)
    else:
        outcome = close_outcome(view.cfg, round_id, len(members), at_deadline=at_deadline)
        if outcome.closed:
            if dropped:
                log.warning("round.silos_dropped", round_id=round_id, dropped=dropped)
            result = await _aggregate(
                store, view, round_id, members, items=items, dropped=dropped or []
            )
        else:
            result = _not_closed(round_id, outcome)
            log.warning(
                "round.quorum_missed",
                round_id=round_id,
                arrived=outcome.arrived,
                needed=outcome.needed,
            )
    if token:
        await store.send_success(token, round_callback(result))
    return result


def _not_closed(round_id: int, outcome: RoundOutcome) -> dict[str, Any]:
    """The callback output of a round that cannot close: the ASL fails the task with its cause."""
    return r.not_closed(round_id, outcome.cause, arrived=outcome.arrived, needed=outcome.needed)


async def _aggregate(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    members: list[str],
    *,
    items: list[dict[str, Any]] | None,
    dropped: list[str],
) -> dict[str, Any]:
    """`items`: the round's items the members were claimed from (None: read them)."""
    by_sk: dict[str, dict[str, Any] | None] = {Verdict.from_item(i).sk: i for i in items or ()}
    if not set(members) <= set(by_sk):
        by_sk = dict(zip(members, await store.get_items(view.task_name, members), strict=True))
    records = [
        parse_update_item(
            {k: v for k, v in (by_sk[sk] or {}).items() if k not in VERDICT_ATTRIBUTES}
        )
        for sk in members
    ]
    no_examples = examples_outcome(view.cfg, round_id, records)
    if no_examples is not None:
        log.warning("round.no_examples", round_id=round_id, accepted=len(records))
        return _not_closed(round_id, no_examples)

    if view.dp_release_limit is not None and view.dp_releases >= view.dp_release_limit:
        return await budget_spent(store, view, round_id)
    made = await new_version_of(store, view, round_id, records)
    if isinstance(made, GlobalRefusedError):  # the head stays; the round's result fails the task
        return await refused.refuse_round(store, view, round_id, members, made)
    new_version, (sha, size, details, stepped) = round_id + 1, made
    result = r.closed_result(
        round_id, new_version, len(members), sha, {**details, **stepped, **r.dropped(dropped)}
    )
    task_values = t.head(new_version, sha, size)
    if r.has_dp_release(details):
        # one more central DP release; the last one the budget allows ends it
        task_values.update(t.dp_releases(view.dp_releases + 1))
        result = r.with_dp_release(result, view.dp_releases + 1)
        result.update(spent_budget(view))
    committed = await store.transact(
        [
            store.update_op(
                view.task_name,
                keys.TASK_SK,
                {**task_values, **stepped},
                condition=all_of(equals(t.HEAD_VERSION, ":expected"), absent(t.FINISHED)),
                condition_values={":expected": round_id},
            ),
            store.update_op(
                view.task_name,
                keys.round_sk(round_id),
                r.closed(result, time.time()),
            ),
        ]
    )
    if not committed:
        return await _committed_before(store, view, round_id)
    log.info(
        "round.closed", round_id=round_id, version=new_version, accepted=len(members), sha256=sha
    )
    await _finish_if_last(store, view, result)
    return result


async def _committed_before(store: ServerStore, view: TaskView, round_id: int) -> dict[str, Any]:
    """The commit's condition failed: an earlier try committed this round (its result, the
    same bytes), or the task finished first (nothing more is applied to it)."""
    round_item = RoundItem.from_item(await store.get_item(view.task_name, keys.round_sk(round_id)))
    if round_item.closed:
        result = round_item.result_of(round_id)
        log.info("round.closed_already", round_id=round_id)
        await _finish_if_last(store, view, result)
        return result
    task = TaskItem.from_item(view.task_name, await store.get_task(view.task_name))
    cause = (
        f"round {round_id} of task {view.task_name!r} was not committed: the task had "
        f"finished ({task.finished or task.status}) at version {task.head_version}"
    )
    log.warning("round.commit_refused", round_id=round_id, cause=cause)
    return r.not_closed(round_id, cause)


async def _finish_if_last(store: ServerStore, view: TaskView, result: dict[str, Any]) -> None:
    outcome = RoundResult.from_item(result)
    if not outcome.closed:
        return
    if outcome.finished:  # central DP: this release spent the budget
        await finish_task(store, view.task_name, str(outcome.finish_reason), token=None)
    elif (outcome.version or 0) >= view.cfg.rounds:
        await finish_task(store, view.task_name, "rounds", token=None)


async def redo_closed(store: ServerStore, view: TaskView, round_id: int) -> None:
    """A record of a round that has closed came again: a retry after a crash between the
    round's commit and its callback. Do what may not have happened (final model, callback);
    both are idempotent, and answering a spent token is harmless."""
    round_item = RoundItem.from_item(await store.get_item(view.task_name, keys.round_sk(round_id)))
    if round_item.closed:
        await close_round(store, view, round_id, token=round_item.token, at_deadline=False)
