"""A live view of a running task on stderr: version or round, alive clients, verdicts.

Every `interval_s` the view reads the task's items (TASK, HEARTBEAT#, UPDATE#) and
redraws one small table with `rich.live.Live`, transient, so nothing is left behind when
the run ends. It draws only when stderr is a terminal: off a TTY the logs are JSON lines
meant for machines and the view stays silent. It watches; it never decides: a failed read
is logged and the next tick tried, and nothing it does can fail the run it watches.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fedasync.core import keys
from fedasync.core.items.task import TaskPeek
from fedasync.core.items.verdict import Verdict
from fedasync.server.store import ServerStore

log = structlog.get_logger()
MAX_NAMES = 8


@dataclass(frozen=True)
class LiveSnapshot:
    """What the view shows, as data: built from items by `snapshot`, drawn by `render`."""

    task_name: str
    status: str
    mode: str
    head_version: int
    limit: int | None  # rounds (sync) or max_versions (async)
    clients: tuple[str, ...]
    alive: tuple[str, ...]
    accepted: int
    rejected: int
    pending: int
    reasons: tuple[tuple[str, int], ...]
    elapsed_s: float


def _config(task: Mapping[str, Any]) -> dict[str, Any]:
    raw = TaskPeek.from_item(task).config
    try:
        config = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def snapshot(
    task_name: str,
    task: Mapping[str, Any] | None,
    heartbeats: Iterable[Mapping[str, Any]],
    updates: Iterable[Mapping[str, Any]],
    *,
    now: float,
    elapsed_s: float = 0.0,
) -> LiveSnapshot:
    """A client is alive while its last heartbeat vouches for it (`expires_at` > now) and
    it has not said it stopped; DynamoDB's TTL deletes lazily, so time is the judge."""
    task = task or {}
    config = _config(task)
    mode = str(config.get("mode") or "sync")
    alive = sorted(
        str(h.get("client_id") or str(h.get("sk", "")).removeprefix(keys.HEARTBEAT_PREFIX))
        for h in heartbeats
        if (_int(h.get("expires_at")) or 0) > now and h.get("status") != "stopped"
    )
    verdicts = [(s.verdict, s.reason) for s in map(Verdict.from_item, updates)]
    reasons = Counter(str(r) for v, r in verdicts if v == "rejected")
    clients = config.get("clients")
    return LiveSnapshot(
        task_name=task_name,
        status=TaskPeek.from_item(task).status or "WAITING",
        mode=mode,
        head_version=TaskPeek.from_item(task).head_version or 0,
        limit=_int(config.get("rounds" if mode == "sync" else "max_versions")),
        clients=tuple(str(c) for c in clients) if isinstance(clients, list) else (),
        alive=tuple(alive),
        accepted=sum(1 for v, _ in verdicts if v == "accepted"),
        rejected=sum(reasons.values()),
        pending=sum(1 for v, _ in verdicts if v not in ("accepted", "rejected")),
        reasons=tuple(reasons.most_common()),
        elapsed_s=elapsed_s,
    )


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" +{len(names) - MAX_NAMES}" if len(names) > MAX_NAMES else "")


def render(snap: LiveSnapshot) -> Table:
    """Every value is a `Text`, never markup: client ids and reasons are untrusted."""
    table = Table(
        title=Text(f"fedasync · {snap.task_name} · {snap.status} · {snap.elapsed_s:.1f} s"),
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold", width=9)
    table.add_column(min_width=34)
    of = f" / {snap.limit}" if snap.limit is not None else ""
    if snap.mode == "sync":
        # rounds count from 0 and round r is open while the head is version r; show 1-based
        done = snap.status in ("SUCCEEDED", "FAILED", "ABORTED") or (
            snap.limit is not None and snap.head_version >= snap.limit
        )
        table.add_row("round", Text("done" if done else f"{snap.head_version + 1}{of}"))
        table.add_row("version", Text(str(snap.head_version)))
    else:
        table.add_row("version", Text(f"{snap.head_version}{of}"))
    total = f" / {len(snap.clients)}" if snap.clients else ""
    table.add_row("alive", Text(f"{len(snap.alive)}{total}  {_names(snap.alive)}".rstrip()))
    table.add_row("accepted", Text(str(snap.accepted), style="green"))
    why = ", ".join(f"{r} {n}" for r, n in snap.reasons)
    table.add_row("rejected", Text(f"{snap.rejected}" + (f"  ({why})" if why else ""), style="red"))
    table.add_row("pending", Text(str(snap.pending)))
    return table


class LiveView:
    """`async with LiveView(store, task_name): ...` draws the task's state while it runs.

    Draws on `console` (default: stderr) only when it is a terminal; otherwise entering
    and leaving do nothing. `last` holds the latest snapshot read, drawn or not.
    """

    def __init__(
        self,
        store: ServerStore,
        task_name: str,
        *,
        interval_s: float = 0.5,
        console: Console | None = None,
    ) -> None:
        self.store, self.task_name, self.interval_s = store, task_name, interval_s
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if console else sys.stderr.isatty()
        self.last: LiveSnapshot | None = None
        self._live: Live | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self._failing = False

    async def read(self) -> LiveSnapshot:
        """One snapshot of the task, from three consistent reads of its items."""
        async with asyncio.timeout(max(5.0, 4 * self.interval_s)):
            task, heartbeats, updates = await asyncio.gather(
                self.store.get_task(self.task_name),
                self.store.query_prefix(self.task_name, keys.HEARTBEAT_PREFIX),
                self.store.query_prefix(self.task_name, keys.UPDATE_PREFIX),
            )
        return snapshot(
            self.task_name,
            task,
            heartbeats,
            updates,
            now=time.time(),
            elapsed_s=time.monotonic() - self._t0,
        )

    async def refresh(self) -> None:
        """Read and redraw once; a failure is logged (once per outage), never raised."""
        try:
            self.last = await self.read()
            if self._live is not None:
                self._live.update(render(self.last), refresh=True)
        except Exception as exc:  # the view must never take the demo down with it
            (log.debug if self._failing else log.warning)(
                "live.read_failed", task_name=self.task_name, error=f"{type(exc).__name__}: {exc}"
            )
            self._failing = True
        else:
            self._failing = False

    async def _tick(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> Self:
        if not self.enabled:
            return self
        self._t0 = time.monotonic()
        # Our own redraws only (no refresh thread), and print()/logs are left where they go.
        self._live = Live(
            Text(f"fedasync · {self.task_name} · starting"),
            console=self.console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()
        self._ticker = asyncio.create_task(self._tick(), name=f"live-view-{self.task_name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            # wait for it to end without re-raising its cancellation as ours
            await asyncio.wait([self._ticker])
            self._ticker = None
        if self._live is not None:
            self._live.stop()
            self._live = None
