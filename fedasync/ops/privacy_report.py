"""Privacy spent, as the operator tools show it (`task status`, the demo's summary).

The aggregate function counts central DP releases (`dp_releases` on the TASK item: one
per sync round, per FedBuff flush, per FedAsync absorbed update); epsilon is computed here from that count with the task's accountant
(the accountant is not in the Lambda bundle). Local DP: each silo's own epsilon is on
its update records (`local_epsilon`); the largest one is what the task spent at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedasync.core.config import TaskConfig
from fedasync.core.items.ledger import entries


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


# The report computes epsilon after at most this many releases (each a PLD composition
# may take a second): every release up to it, else evenly spaced ones and the last.
MAX_CURVE_POINTS = 50


def released_versions(cfg: TaskConfig, events: Iterable[Mapping[str, Any]]) -> list[int]:
    """The versions that were central DP releases, in order: sync, every round's version;
    async, every accepted update that produced a version (FedAsync: each; FedBuff: the
    flushes)."""
    if cfg.mode == "async":
        found = {
            e.applied_version
            for e in entries(events, "update")
            if e.accepted and e.version_sha256 and e.applied_version is not None
        }
    else:
        found = {int(e.version) for e in entries(events, "round") if e.dp}
    return sorted(found)


def epsilon_curve(cfg: TaskConfig, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Central DP: epsilon spent after each release (release count, version, epsilon), by
    the task's accountant at its delta; evenly thinned past `MAX_CURVE_POINTS`."""
    privacy = cfg.privacy
    if privacy is None or privacy.mode != "central":
        return []
    versions = released_versions(cfg, events)
    picks: list[int] = list(range(1, len(versions) + 1))
    if len(versions) > MAX_CURVE_POINTS:
        step = len(versions) / MAX_CURVE_POINTS
        picks = sorted({round(step * (i + 1)) for i in range(MAX_CURVE_POINTS)} | {len(versions)})
    return [
        {"release": n, "version": versions[n - 1], "epsilon": privacy.epsilon_after(n)}
        for n in picks
    ]


def from_ledger(cfg: TaskConfig, ledger: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The privacy a run's ledger shows it spent (None without DP)."""
    events = list(ledger)
    if cfg.privacy is None:
        return None
    if cfg.privacy.mode == "central":
        return central(cfg, len(released_versions(cfg, events)), None)
    return local(cfg, (e.record or {} for e in entries(events, "update")))
