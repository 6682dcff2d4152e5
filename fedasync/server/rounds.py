"""Sync mode: open a round, accept its updates, close it with FedAvg (or fail it)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog

from fedasync.core import codec, keys
from fedasync.core.decisions import (
    VERDICT_ATTRIBUTES,
    close_outcome,
    describe,
    parse_update_item,
    round_complete,
)
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.fedavg import FedAvgAccumulator
from fedasync.server.cache import CACHE
from fedasync.server.finish import finish_task
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
        {"token": token, "round_id": round_id, "opened_at": time.time()},
        condition="attribute_not_exists(#closed)",
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


async def maybe_complete(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    *,
    items: list[dict[str, Any]] | None = None,
    round_item: dict[str, Any] | None = None,
) -> None:
    """After a verdict: close the round once every expected client is decided.

    `items`: the round's update items as they stand now, when the caller knows them (else
    they are queried); `round_item`: the round item, when the caller has just read it."""
    if items is None:
        items = await store.query_prefix(view.task_name, f"{keys.UPDATE_PREFIX}{round_id:08d}#")
    decided = {str(i.get("client_id")) for i in items if i.get("verdict")}
    if not round_complete(view.cfg, decided):
        return
    # every expected client is decided, so these items are the round's final word: the
    # members claimed from them are what a fresh query would give
    await close_round(
        store, view, round_id, token=None, at_deadline=False, items=items, round_item=round_item
    )


async def _claim_members(
    store: ServerStore, view: TaskView, round_id: int, items: list[dict[str, Any]] | None = None
) -> tuple[list[str], dict[str, Any] | None]:
    """Fix once which updates the round aggregates, so every retry computes the same bytes.

    Returns the members, and the round item as it is now when an earlier try claimed them
    (None when this call did, from `items`)."""
    if items is None:
        items = await store.query_prefix(view.task_name, f"{keys.UPDATE_PREFIX}{round_id:08d}#")
    accepted = sorted(str(i["sk"]) for i in items if i.get("verdict") == "accepted")
    op = store.update_op(
        view.task_name,
        keys.round_sk(round_id),
        {"members": accepted, "round_id": round_id},
        condition="attribute_not_exists(#members)",
    )
    if await store.update(op):
        return accepted, None
    current = await store.get_item(view.task_name, keys.round_sk(round_id)) or {}
    return [str(m) for m in current.get("members", [])], current


async def close_round(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    *,
    token: str | None,
    at_deadline: bool,
    items: list[dict[str, Any]] | None = None,
    round_item: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate the round's accepted updates into version round_id + 1, or fail it.

    `token`: the round's callback token (None: the one kept on the round item). `items`:
    the round's update items when the caller has just queried them. `round_item`: the
    round item when the caller has just read it (a claim that fails reads it again)."""
    if round_item is None:
        round_item = await store.get_item(view.task_name, keys.round_sk(round_id)) or {}
    members: list[str] = []
    if not round_item.get("closed"):
        members, current = await _claim_members(store, view, round_id, items)
        if current is not None:  # claimed by an earlier try: the round as it is now
            round_item, items = current, None
    token = token or round_item.get("token")
    if round_item.get("closed"):
        result = dict(round_item.get("result") or {"closed": True, "round_id": round_id})
        await _finish_if_last(store, view, result)
    else:
        outcome = close_outcome(view.cfg, round_id, len(members), at_deadline=at_deadline)
        if outcome.closed:
            result = await _aggregate(store, view, round_id, members, items)
        else:
            result = {
                "closed": False,
                "round_id": round_id,
                "arrived": outcome.arrived,
                "needed": outcome.needed,
                "cause": outcome.cause,
            }
            log.warning(
                "round.quorum_missed",
                round_id=round_id,
                arrived=outcome.arrived,
                needed=outcome.needed,
            )
    if token:
        await store.send_success(token, result)
    return result


async def _aggregate(
    store: ServerStore,
    view: TaskView,
    round_id: int,
    members: list[str],
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`items`: the round's items the members were claimed from (None: read them)."""
    acc = FedAvgAccumulator(view.spec, who=f"round {round_id} of task {view.task_name!r}")
    by_sk: dict[str, dict[str, Any] | None] = {str(i.get("sk")): i for i in items or ()}
    if not set(members) <= set(by_sk):
        by_sk = dict(zip(members, await store.get_items(view.task_name, members), strict=True))
    records = [
        parse_update_item(
            {k: v for k, v in (by_sk[sk] or {}).items() if k not in VERDICT_ATTRIBUTES}
        )
        for sk in members
    ]

    # the updates as validated at their verdicts: from the cache (held here, so no
    # eviction can take them midway), or read again, a few ahead, and re-checked (an
    # object rewritten since its verdict must not slip into the global model)
    cached = {record.sha256: CACHE.get(record.sha256) for record in records}
    missing = [record for record in records if cached[record.sha256] is None]
    objects = store.iter_objects(
        [record.s3_key for record in missing], max_bytes=view.cfg.max_model_bytes
    )
    async with contextlib.aclosing(objects):
        for record in records:
            weights = cached[record.sha256]
            if weights is None:
                data = await anext(objects)
                if codec.sha256_bytes(data) != record.sha256:
                    raise ChecksumMismatchError(
                        f"{describe(record)}: object {record.s3_key!r} changed after the "
                        f"update was accepted (SHA-256 no longer {record.sha256}); round "
                        f"{round_id} cannot be aggregated from it"
                    )
                weights = codec.decode(data, who=record.sk)
                del data
            acc.add(weights, record.num_examples, who=record.sk)
            del weights
    new_version = round_id + 1
    blob = codec.encode(acc.result())
    sha = codec.sha256_bytes(blob)
    await store.put_object(keys.global_key(view.task_name, new_version), blob, sha)
    result = {
        "closed": True,
        "round_id": round_id,
        "version": new_version,
        "accepted": len(members),
        "sha256": sha,
    }
    committed = await store.transact(
        [
            store.update_op(
                view.task_name,
                keys.TASK_SK,
                {"head_version": new_version, "head_sha256": sha, "head_size": len(blob)},
                condition="#head_version = :expected",
                condition_values={":expected": round_id},
            ),
            store.update_op(
                view.task_name,
                keys.round_sk(round_id),
                {"closed": True, "result": result, "closed_at": time.time()},
            ),
        ]
    )
    log.info(
        "round.closed",
        round_id=round_id,
        version=new_version,
        accepted=len(members),
        committed=committed,
        sha256=sha,
    )
    await _finish_if_last(store, view, result)
    return result


async def _finish_if_last(store: ServerStore, view: TaskView, result: dict[str, Any]) -> None:
    if result.get("closed") and int(result.get("version", 0)) >= view.cfg.rounds:
        await finish_task(store, view.task_name, "rounds", token=None)


async def redo_closed(store: ServerStore, view: TaskView, round_id: int) -> None:
    """A record of a round that has closed came again: a retry after a crash between the
    round's commit and its callback. Do what may not have happened (final model, callback);
    both are idempotent, and answering a spent token is harmless."""
    round_item = await store.get_item(view.task_name, keys.round_sk(round_id)) or {}
    if round_item.get("closed"):
        await close_round(store, view, round_id, token=round_item.get("token"), at_deadline=False)
