"""A new global model was refused (`GlobalRefusedError`): keep the head, say why, go on.

`check_new_global` runs on every candidate before anything is written. When it refuses:

- async (decided in the plan, `async_plan._refuse`; the updates committed before the
  batch that the dropped buffer held are found and marked here): the update that
  triggered the step is rejected with the reason
  (`global_non_finite` or `global_norm`); a FedBuff step also drops its buffer (the
  deltas that made the refused step would refuse every step after it): the buffered
  updates keep their `accepted` verdict and `seq` (decisions already taken stay) and get
  `discarded` = the reason, and the next update starts a fresh buffer
  (`asyncagg.after_refusal`). The head stays; the silos are served as after any rejection.
- sync: the round closes without a new version (`closed: false` with a readable cause)
  and the state machine fails the task with that cause: every member was a validated
  update, so no subset is to blame and a round without them has nothing to average.
  The members get `discarded` = the reason.

Either way the TASK item keeps the last refusal (`global_refused`), which `fedasync
task status` shows. Every write is idempotent: a retry writes the same values.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from fedasync.core import codec, keys
from fedasync.core.codec import Weights
from fedasync.core.errors import GlobalRefusedError
from fedasync.core.globalcheck import check_new_global
from fedasync.core.items import round as r
from fedasync.core.items import task as t
from fedasync.core.items import verdict as v
from fedasync.core.items.expressions import equals
from fedasync.core.items.task import REFUSED
from fedasync.core.items.verdict import Verdict
from fedasync.core.strategies import sync_strategy
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def buffered_sks(store: ServerStore, view: TaskView) -> list[str]:
    """The sort keys of the updates in the head's FedBuff buffer (seqs absorbed-buffered+1..)."""
    first = view.state.absorbed - view.state.buffered + 1
    items = await store.query_prefix(view.task_name, keys.UPDATE_PREFIX)
    subs = [Verdict.from_item(i) for i in items]
    return sorted(s.sk for s in subs if s.accepted and first <= (s.seq or 0) <= view.state.absorbed)


async def mark_discarded(
    store: ServerStore, task_name: str, sks: list[str], exc: GlobalRefusedError
) -> None:
    for sk in sks:
        op = store.update_op(
            task_name,
            sk,
            v.discarded(exc.reason, exc.message[:2000]),
            condition=equals(v.VERDICT, ":accepted"),
            condition_values={":accepted": v.ACCEPTED},
        )
        await store.update(op)


def _refusal(exc: GlobalRefusedError, version: int, sks: list[str]) -> dict[str, Any]:
    return t.refusal(exc.reason, exc.message[:2000], version, sks, time.time())


async def check_round(
    store: ServerStore, view: TaskView, round_id: int, members: int, candidate: Weights
) -> GlobalRefusedError | None:
    """`check_new_global` on a round's FedAvg (a weighted mean of moves within
    `max_update_norm` of version round_id moves it by at most that); the refusal, if any."""
    head = None
    if view.cfg.max_update_norm is not None and round_id == view.head_version:
        head = CACHE.get(view.head_sha256) or codec.decode(
            await store.get_object(keys.global_key(view.task_name, round_id))
        )
    try:
        check_new_global(
            candidate,
            head or candidate,
            max_step=(
                sync_strategy(view.cfg).max_step(members, view.cfg.max_update_norm)
                if head is not None and view.cfg.max_update_norm is not None
                else None
            ),
            who=f"round {round_id} of task {view.task_name!r}: the {_rule(view)} of its "
            f"{members} accepted update(s)",
        )
    except GlobalRefusedError as exc:
        return exc
    return None


def _rule(view: TaskView) -> str:
    return "FedAvg" if view.cfg.aggregation == "fedavg" else view.cfg.aggregation


def check_stepped(view: TaskView, round_id: int, stepped: Weights) -> GlobalRefusedError | None:
    """`check_new_global` (finite, in range of the dtype) on the model a server optimizer
    made of a round's checked aggregate; its step length is the optimizer's, not bounded
    by `max_update_norm`."""
    if view.cfg.server_optimizer is None:
        return None
    try:
        check_new_global(
            stepped,
            stepped,
            max_step=None,
            who=f"round {round_id} of task {view.task_name!r}: the server optimizer's step",
        )
    except GlobalRefusedError as exc:
        return exc
    return None


async def refuse_round(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    members: list[str],
    exc: GlobalRefusedError,
) -> dict[str, Any]:
    """Close the round without a new version; the result's cause fails the task."""
    await mark_discarded(store, view.task_name, members, exc)
    cause = f"{exc.message}; the round closed without a new version"
    result = r.not_closed(
        round_id, cause, arrived=len(members), needed=view.cfg.quorum, reason=exc.reason
    )
    await store.transact(
        [
            store.update_op(view.task_name, keys.TASK_SK, _refusal(exc, round_id, members)),
            store.update_op(
                view.task_name,
                keys.round_sk(round_id),
                r.closed(result, time.time()),
            ),
        ]
    )
    log.warning(
        "global.refused",
        task_name=view.task_name,
        reason=exc.reason,
        round_id=round_id,
        version=round_id,
        members=members,
    )
    return result


__all__ = [
    "REFUSED",
    "buffered_sks",
    "check_round",
    "check_stepped",
    "mark_discarded",
    "refuse_round",
]
