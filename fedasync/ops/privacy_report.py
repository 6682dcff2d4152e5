"""Privacy spent, as the operator tools show it (`task status`, the demo's summary).

The aggregate function counts central DP releases (`dp_releases` on the TASK item, one
per sync round); epsilon is computed here from that count with the task's accountant
(the accountant is not in the Lambda bundle). Local DP: each silo's own epsilon is on
its update records (`local_epsilon`); the largest one is what the task spent at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedasync.core.config import TaskConfig


def central(cfg: TaskConfig, releases: int, limit: int | None) -> dict[str, Any] | None:
    privacy = cfg.privacy
    if privacy is None or privacy.mode != "central":
        return None
    return {
        "mode": "central",
        "releases": releases,
        "release_limit": limit,
        "epsilon": round(privacy.epsilon_after(releases), 6),
        "target_epsilon": privacy.target_epsilon,
        "delta": privacy.delta,
        "accountant": privacy.accountant,
        "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm,
    }


def local(cfg: TaskConfig, records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    privacy = cfg.privacy
    if privacy is None or privacy.mode != "local":
        return None
    spent: dict[str, float] = {}
    for record in records:
        eps = record.get("local_epsilon")
        if isinstance(eps, int | float):
            client = str(record.get("client_id"))
            spent[client] = max(spent.get(client, 0.0), float(eps))
    return {
        "mode": "local",
        "epsilon_by_silo": spent,
        "epsilon_max": max(spent.values(), default=0.0),
        "target_epsilon": privacy.target_epsilon,
        "delta": privacy.delta,
        "accountant": privacy.accountant,
    }


def from_ledger(cfg: TaskConfig, ledger: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The privacy a run's ledger shows it spent (None without DP)."""
    events = list(ledger)
    if cfg.privacy is None:
        return None
    if cfg.privacy.mode == "central":
        if cfg.mode == "async":  # FedAsync: every accepted update is one release
            releases = sum(
                1 for e in events if e["kind"] == "update" and e.get("verdict") == "accepted"
            )
        else:
            releases = max(
                (int(e["dp"]["releases"]) for e in events if e["kind"] == "round" and e.get("dp")),
                default=0,
            )
        return central(cfg, releases, None)
    return local(cfg, (e["record"] for e in events if e["kind"] == "update"))
