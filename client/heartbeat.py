"""Liveness: a heartbeat record with a TTL, and the held messages kept invisible.

Beats are scheduled on a fixed grid (start + k * interval) so that a slow write does not
push every later beat back; a missed slot is skipped, not bunched up. A failed beat is
logged and the next one tried: one lost write must not end a run.
"""

from __future__ import annotations

import asyncio
import math
import time

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from client.state import RunState
from fedasync.core.messages import Heartbeat

log = structlog.get_logger()


async def heartbeat_loop(state: RunState) -> None:
    loop = asyncio.get_running_loop()
    interval = state.cfg.heartbeat_interval_s
    start = loop.time()
    slot = 0
    while True:
        await beat(state)
        slot = max(slot + 1, math.ceil((loop.time() - start) / interval))
        await asyncio.sleep(start + slot * interval - loop.time())


async def beat(state: RunState) -> None:
    cfg = state.cfg
    sent = time.monotonic()
    now = time.time()
    heartbeat = Heartbeat(
        task_name=cfg.task_name,
        client_id=cfg.client_id,
        sent_at=now,
        expires_at=int(now + cfg.ttl_s),
        status=state.phase,
        version=state.version,
    )
    receipts = [*state.inbox.receipts(), *state.secagg_receipts]
    try:
        async with asyncio.timeout(cfg.heartbeat_interval_s):
            await asyncio.gather(state.ports.put_heartbeat(heartbeat), state.ports.extend(receipts))
    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
        log.warning("client.heartbeat_failed", error=str(exc) or type(exc).__name__)
        return
    state.report.heartbeats.append(sent)
    state.report.heartbeat_latencies.append(time.monotonic() - sent)
    log.debug("client.heartbeat", status=heartbeat.status, held_messages=len(receipts))


async def final_beat(state: RunState) -> None:
    """Say 'stopped' once the task has ended, so nobody waits for this client's TTL."""
    state.phases.clear()
    state.phases["run"] = "stopped"
    await beat(state)
