"""Replay of an async task's central-DP releases (FedAsync updates, FedBuff flushes).

A release's noise is in no ledger, so a released version cannot be recomputed: what
replay re-derives is everything around it, with the same rules the server applies
(`asyncagg.absorb`): each update's staleness and the version it applied to, which
updates make a FedBuff buffer and when it flushes, and the per-silo cap (a silo at most
once per buffer); the released version itself is read back against the SHA-256 its
verdict recorded, and every later step starts from those bytes (docs/privacy.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from fedasync.core import codec
from fedasync.core.asyncagg import AsyncState, after_refusal, staleness_of
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import describe
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.items.ledger import Entry
from fedasync.core.keys import global_key
from fedasync.core.messages import UpdateRecord


class Problems(Protocol):
    applied: int
    problems: list[str]


def fetch(load: Callable[[str], bytes], key: str, sha: str | None, who: str) -> bytes:
    data = load(key)
    if sha is not None and codec.sha256_bytes(data) != sha:
        raise ChecksumMismatchError(f"{who}: object {key!r} does not match its recorded SHA-256")
    return data


def _next_state(state: AsyncState, cfg: TaskConfig, record: UpdateRecord) -> AsyncState:
    if cfg.aggregation != "fedbuff":  # FedAsync: every absorbed update is a release
        return replace(state, version=state.version + 1, absorbed=state.absorbed + 1)
    if state.buffered + 1 >= cfg.buffer_size:  # the flush: one release
        return AsyncState(version=state.version + 1, absorbed=state.absorbed + 1)
    return replace(
        state,
        absorbed=state.absorbed + 1,
        buffered=state.buffered + 1,
        buffer_clients=(*state.buffer_clients, record.client_id),
    )


def recorded_release(
    state: AsyncState,
    update: Entry,
    *,
    cfg: TaskConfig,
    record: UpdateRecord,
    load: Callable[[str], bytes],
    versions: dict[int, bytes],
    result: Problems,
) -> AsyncState:
    """The state after one accepted update of a central-DP async task; a release's
    version is read back into `versions` and checked against its recorded SHA-256."""
    who = describe(record)
    staleness = staleness_of(state, record.base_version, who)
    if record.client_id in state.buffer_clients:
        result.problems.append(
            f"{who}: accepted into a FedBuff buffer that already held an update of its silo "
            "(central DP takes a silo once per flush)"
        )
    after = _next_state(state, cfg, record)
    for name, mine, theirs in (
        ("staleness", staleness, update.staleness),
        ("applied_version", after.version, update.applied_version),
    ):
        if theirs is not None and mine != int(theirs):
            result.problems.append(f"{who}: {name} {mine} on replay, {theirs} recorded")
    if after.version != state.version:
        sha = update.version_sha256
        key = global_key(record.task_name, after.version)
        versions[after.version] = fetch(load, key, str(sha) if sha else None, f"release {key}")
    elif update.discarded and after.buffered == cfg.buffer_size - 1:
        after = after_refusal(after)  # the next update's flush was refused: buffer dropped
    result.applied += 1
    return after
