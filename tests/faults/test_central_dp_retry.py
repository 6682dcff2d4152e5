"""Central DP FedBuff under a crash between the release's write and its commit: the
retry draws fresh noise, but the first try's release is the version (S3 conditional
write), so a retried flush never re-noises and replay still ends at the head."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger, object_keys
from fedasync.server.store import ServerStore
from tests.faults.harness import CLIENTS, drive, stack_for
from tests.integration.test_server_sync import store_for


class InjectedCrashError(RuntimeError):
    pass


def _cfg() -> TaskConfig:
    # 6 updates from version 0 in the order a, b, c, a, b, c: buffers {a,b} {c,a} {b,c}
    return TaskConfig.parse(
        {
            "task_name": "dp-retry",
            "mode": "async",
            "strategy": "fedbuff",
            "clients": list(CLIENTS),
            "buffer_size": 2,
            "max_staleness": 10,
            "max_versions": 3,
            "privacy": {
                "mode": "central",
                "clip_norm": 1.0,
                "noise_multiplier": 1.0,
                "target_epsilon": 50.0,
                "delta": 1e-3,
            },
        }
    )


async def test_a_flush_retried_after_a_crash_keeps_its_first_release(
    moto_server, prefix, monkeypatch: pytest.MonkeyPatch
):
    # GIVEN an aggregator that dies once after writing each release, before its commit
    writes: list[tuple[str, str, str]] = []  # (key, SHA-256 offered, SHA-256 kept)
    crashed: set[str] = set()
    real_once, real_transact = ServerStore.put_object_once, ServerStore.transact

    @functools.wraps(real_once)
    async def once(store: ServerStore, key: str, data: bytes, sha256: str) -> Any:
        kept = await real_once(store, key, data, sha256)
        writes.append((key, sha256, kept[1]))
        return kept

    @functools.wraps(real_transact)
    async def transact(store: ServerStore, ops: list[dict[str, Any]]) -> bool:
        # one commit may carry several flushes (a stream batch of several updates): it
        # crashes once if any release written before it has not been through a crash yet
        fresh = {key for key, _, _ in writes} - crashed
        if fresh:
            crashed.update(fresh)
            raise InjectedCrashError(f"crash after writing {sorted(fresh)}, before the commit")
        return await real_transact(store, ops)

    monkeypatch.setattr(ServerStore, "put_object_once", once)
    monkeypatch.setattr(ServerStore, "transact", transact)
    async with stack_for(moto_server, prefix) as stack:
        # WHEN the scripted task runs to its end
        got = await drive(stack, _cfg())
        ledger = await export_ledger(store_for(stack), "dp-retry")
        blobs = {k: await store_for(stack).get_object(k) for k in object_keys(ledger)}
    # THEN every release was written, crashed and retried, and the retry drew new noise
    assert got.status == "SUCCEEDED" and got.head_version == 3 and len(crashed) == 3
    first: dict[str, str] = {}
    for key, offered, kept in writes:
        first.setdefault(key, offered)
        # AND whatever a retry offered, the object kept is the first try's release
        assert kept == first[key]
    assert any(offered != first[key] for key, offered, _ in writes)
    # AND the committed versions are those first releases; replay ends at the head
    assert {got.version_sha256[v] for v in (1, 2, 3)} == set(first.values())
    result = replay(ledger, blobs.__getitem__)
    assert result.ok, (result.problems, result.mismatches)
