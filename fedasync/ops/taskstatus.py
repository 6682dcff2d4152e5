"""`status`: a task's mode, version or round, alive clients, update verdicts and its
execution, as plain data (the CLI renders it, `fedasync.cli.status_view`)."""

from __future__ import annotations

import time
from typing import Any

from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.evals import eval_means
from fedasync.core.items.round import RoundItem
from fedasync.core.items.task import TaskItem
from fedasync.core.items.verdict import Verdict
from fedasync.deployment import Deployment
from fedasync.ops import privacy_report
from fedasync.ops.tasklookup import describe_execution, execution_arn, task_item
from fedasync.server.store import ServerStore


def _updates(items: list[dict[str, Any]]) -> dict[str, Any]:
    subs = [(i, Verdict.from_item(i)) for i in items]
    said = sorted(((i, s) for i, s in subs if s.rejected), key=lambda p: p[1].decided_at or 0.0)
    rejected = [
        {
            "client_id": s.client_id,
            "update_id": i.get("update_id"),
            "reason": s.reason,
            "detail": s.detail,
            "decided_at": s.decided_at,
        }
        for i, s in said  # oldest first
    ]
    return {
        "accepted": sum(1 for _, s in subs if s.accepted),
        "rejected": len(rejected),
        "pending": sum(1 for _, s in subs if not s.decided),
        "discarded": sum(1 for _, s in subs if s.discarded),
        "rejections": rejected,
    }


def _clients(cfg: TaskConfig, beats: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """Alive = a heartbeat whose `expires_at` is still ahead (TTL deletion is lazy) and
    that is not the client's last word (`stopped`, sent when it leaves a finished task)."""
    seen = {
        str(b["client_id"]): {
            "status": b.get("status"),
            "version": b.get("version"),
            "alive": now < float(b.get("expires_at", 0)) and b.get("status") != "stopped",
            "last_seen_s": round(now - float(b.get("sent_at", now)), 1),
        }
        for b in beats
        if b.get("client_id")
    }
    return {
        "expected": list(cfg.clients),
        "alive": sorted(c for c, b in seen.items() if b["alive"]),
        "heartbeats": seen,
    }


async def status(
    aws: AwsContext, stack: Deployment, task_name: str, *, now: float | None = None
) -> dict[str, Any]:
    """Mode, version/round, alive clients, update verdicts and the execution, as data."""
    store = ServerStore(aws, stack)
    item, view = await task_item(store, task_name)
    cfg, now = view.cfg, time.time() if now is None else now
    arn = await execution_arn(aws, stack, item)
    task = TaskItem.from_item(task_name, item)
    out: dict[str, Any] = {
        "task_name": task_name,
        "mode": cfg.mode,
        "strategy": cfg.aggregation,
        "status": view.status,
        "version": view.head_version,
        "finished": view.finished,
        "head_sha256": view.head_sha256,
        "final_version": task.final_version,
        "final_sha256": task.final_sha256,
        "cause": task.cause,
        # the last new global model refused before commit (server/refused.py), if any
        "global_refused": task.refused,
        "attempt": view.attempt,
        "attempts": [dict(a) for a in task.attempts],
    }
    if cfg.mode == "sync":
        rounds = await store.query_prefix(task_name, keys.ROUND_PREFIX)
        out["round"] = None if view.finished else view.head_version
        out["rounds"] = cfg.rounds
        out["rounds_closed"] = sum(1 for r in rounds if RoundItem.from_item(r).closed)
    else:
        out["max_versions"] = cfg.max_versions
        out["absorbed"] = view.state.absorbed
    out["clients"] = _clients(cfg, await store.query_prefix(task_name, keys.HEARTBEAT_PREFIX), now)
    updates = await store.query_prefix(task_name, keys.UPDATE_PREFIX)
    out["updates"] = _updates(updates)
    out["privacy"] = privacy_report.central(
        cfg, view.dp_releases, view.dp_release_limit
    ) or privacy_report.local(cfg, updates)
    # per round (sync) / version (async): the example-weighted mean of each eval_* metric
    out["evaluation"] = eval_means(updates)
    out["execution"] = await describe_execution(aws, str(arn))
    return out


__all__ = ["status"]
