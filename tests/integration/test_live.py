"""The live view against a real embedded stack: it counts what the server decided."""

from __future__ import annotations

import asyncio
import io
import time

from rich.console import Console
from structlog.testing import capture_logs

from fedasync.aws.records import DynamoRecords
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.ops.live import LiveView
from fedasync.server.store import ServerStore, Where
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import (
    CLIENTS,
    clients_for,
    initial_model,
    stack,  # noqa: F401 - the fixture
    store_for,
)


async def first_notice(client):
    while True:
        notice = await client.poll()
        if notice is not None:
            return notice


async def heartbeat(store: ServerStore, task: str, client: str, ttl_s: float, status: str) -> None:
    item = {
        "task_name": task,
        "sk": keys.heartbeat_sk(client),
        "client_id": client,
        "sent_at": time.time(),
        "expires_at": int(time.time() + ttl_s),
        "status": status,
    }
    # a silo's heartbeat goes to the inbox, which the server itself never writes
    assert await DynamoRecords(store.aws, store.where.table).put(item)


async def test_live_view_shows_round_alive_clients_and_verdicts(stack, wait_until):
    # GIVEN a sync task of 4 rounds, in round 0: hospital-a sent a good update,
    #   bank-b one whose checksum does not match, dc-c nothing yet
    cfg = TaskConfig.parse(
        {"task_name": "live", "clients": list(CLIENTS), "rounds": 4, "round_timeout_s": 60}
    )
    store = store_for(stack)
    await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    good, bad, _silent = clients_for(stack)
    await good.submit(await first_notice(good))
    await bad.submit(await first_notice(bad), sha256="0" * 64)
    # AND hospital-a's heartbeat is current, bank-b's expired, dc-c said it stopped
    await heartbeat(store, "live", "hospital-a", 60, "training")
    await heartbeat(store, "live", "bank-b", -5, "idle")
    await heartbeat(store, "live", "dc-c", 60, "stopped")

    async def both_decided():
        items = await store.query_prefix("live", keys.UPDATE_PREFIX)
        return len([i for i in items if i.get("verdict")]) == 2

    await wait_until(both_decided, timeout_s=20)
    # WHEN the live view runs on a terminal for a few ticks
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    async with LiveView(store, "live", interval_s=0.1, console=console) as view:
        await wait_until(lambda: view.last is not None, timeout_s=5)
        await asyncio.sleep(0.3)
    # THEN it read round 1 of 4, one alive client, one accepted and one rejected update
    snap = view.last
    assert snap is not None
    assert (snap.mode, snap.head_version, snap.limit) == ("sync", 0, 4)
    assert snap.alive == ("hospital-a",)
    assert (snap.accepted, snap.rejected, snap.pending) == (1, 1, 0)
    # AND drew it: the last frame drawn holds the same facts
    frame = out.getvalue().rsplit("fedasync · live", 1)[-1]
    for row in ("round", "1 / 4", "alive", "1 / 3", "hospital-a", "accepted", "rejected"):
        assert row in frame
    assert "bank-b" not in frame.split("rejected")[0]  # expired, so not listed as alive


async def test_off_a_terminal_the_view_draws_nothing(stack):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    async with LiveView(store_for(stack), "nothing", interval_s=0.05, console=console) as view:
        await asyncio.sleep(0.2)
    assert out.getvalue() == ""
    assert view.last is None and not view.enabled


async def test_a_failing_store_is_logged_once_and_never_raised(stack):
    # GIVEN a store pointing at a table that does not exist
    e = stack.endpoints
    broken = ServerStore(stack.aws, Where(table="no-such-table", bucket=e.bucket))
    console = Console(file=io.StringIO(), force_terminal=True)
    # WHEN the view ticks several times
    with capture_logs() as logs:
        async with LiveView(broken, "t", interval_s=0.05, console=console) as view:
            await asyncio.sleep(0.4)
    # THEN the run goes on; the outage is one warning, not one per tick
    assert view.last is None
    warnings = [e for e in logs if e["event"] == "live.read_failed" and e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "ResourceNotFound" in warnings[0]["error"]
