"""Who is in a sync round: the updates it aggregates (claimed once), and the dead silos it
may close without."""

from __future__ import annotations

import time
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.decisions import droppable, lapsed
from fedasync.core.verdicts import decided_on
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def claim_members(
    store: ServerStore, view: TaskView, round_id: int, items: list[dict[str, Any]] | None = None
) -> tuple[list[str], dict[str, Any] | None]:
    """Fix once which updates the round aggregates, so every retry computes the same bytes.

    First the round is sealed: an accept that reads the round item from then on refuses
    the update (`closed_round`). An accept that read it before the seal was of an item
    that existed then, so the query after the seal finds it: if it has no verdict yet, a
    conditional rejection races the accept's conditional verdict and exactly one wins,
    so an update is accepted if and only if it is a member. `items`: the round's items as
    the stream handler (the only writer of acceptances) knows them now; else queried.

    Returns the members, and the round item as it is now when an earlier try claimed them
    (None when this call did)."""
    round_sk = keys.round_sk(round_id)
    seal = store.update_op(
        view.task_name,
        round_sk,
        {"sealed": True, "round_id": round_id},
        condition="attribute_not_exists(#members)",
    )
    if await store.update(seal):
        if items is None:
            items = await store.query_prefix(view.task_name, f"{keys.UPDATE_PREFIX}{round_id:08d}#")
        items = [await _settle(store, view, round_id, item) for item in items]
        accepted = sorted(str(i["sk"]) for i in items if i.get("verdict") == "accepted")
        op = store.update_op(
            view.task_name,
            round_sk,
            {"members": accepted, "round_id": round_id},
            condition="attribute_not_exists(#members)",
        )
        if await store.update(op):
            return accepted, None
    current = await store.get_item(view.task_name, round_sk) or {}
    return [str(m) for m in current.get("members", [])], current


async def _settle(
    store: ServerStore, view: TaskView, round_id: int, item: dict[str, Any]
) -> dict[str, Any]:
    """A rostered client's undecided update in a sealed round: reject it as too late, unless
    its accept wins the race (then the item as that accept wrote it)."""
    if item.get("verdict") or item.get("client_id") not in view.cfg.clients:
        return item  # decided, or a stranger's (never accepted; its own reason comes later)
    detail = (
        f"update item {item.get('sk')!r} from client {item.get('client_id')!r} for task "
        f"{view.task_name!r} was still undecided when round {round_id} closed"
    )
    verdict = {
        "verdict": "rejected",
        "reason": "closed_round",
        "detail": detail,
        "decided_at": time.time(),
        **decided_on(item),
    }
    op = store.update_op(
        view.task_name, str(item["sk"]), verdict, condition="attribute_not_exists(#verdict)"
    )
    if await store.update(op):
        log.warning("update.rejected", sk=item.get("sk"), reason="closed_round", detail=detail)
        return {**item, **verdict}
    return await store.get_item(view.task_name, str(item["sk"])) or item


async def dead_undecided(
    store: ServerStore, view: TaskView, items: list[dict[str, Any]], decided: set[str]
) -> list[str]:
    """The undecided clients when every one is dead (heartbeat lapsed or `stopped`), none
    has an update on its way, and the quorum is met already; else none."""
    cfg = view.cfg
    undecided = sorted(set(cfg.clients) - decided)
    accepted = sum(
        1 for i in items if i.get("verdict") == "accepted" and i.get("client_id") in cfg.clients
    )
    in_flight = {str(i.get("client_id")) for i in items} & set(undecided)
    if accepted < cfg.quorum or in_flight:
        return []  # cannot close early anyway, or an update is coming on the stream
    beats = await store.get_items(view.task_name, [keys.heartbeat_sk(c) for c in undecided])
    dead = lapsed(dict(zip(undecided, beats, strict=True)), time.time())
    return undecided if droppable(cfg, set(undecided), accepted, dead) else []
