"""What the concurrent parts of one run share: the inbox, the phase, the report."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from client.config import ClientConfig
from client.data import Dataset
from client.inbox import Held, Inbox
from client.ports import ClientPorts
from client.privacy import LocalPrivacy
from client.progress import Progress
from client.trainers.base import Trainer
from fedasync.core.messages import GlobalModelNotice, UpdateRecord
from fedasync.core.secagg.notice import SecAggNotice

T = TypeVar("T")

Phase = Literal["idle", "downloading", "training", "uploading", "stopped"]
Outcome = Literal["final", "stopped"]


@dataclass
class ClientReport:
    """What a run did, for the caller (the demo runs N clients and compares reports)."""

    task_name: str
    client_id: str
    outcome: Outcome = "stopped"
    updates: list[UpdateRecord] = field(default_factory=list)
    already_recorded: int = 0  # notices whose update record existed before we trained
    superseded: int = 0
    duplicates: int = 0
    rejected_notices: int = 0
    corrupt_downloads: int = 0  # notices given back: their model failed its checksum
    train_failures: int = 0  # notices given back: the trainer raised
    heartbeats: list[float] = field(default_factory=list)  # monotonic send time, written beats
    heartbeat_latencies: list[float] = field(default_factory=list)  # seconds to write each
    final_notice: GlobalModelNotice | None = None
    secagg_answers: int = 0  # SecAgg phases answered (a redelivered notice counts again)
    secagg_refused: int = 0  # SecAgg rounds refused: no identity key configured


@dataclass(frozen=True)
class PendingUpload:
    """A trained local model on disk and the record to write once it is in S3."""

    held: Held
    record: UpdateRecord
    path: Path


@dataclass(frozen=True)
class EndOfRun:
    """The final notice, queued behind the last upload so that upload still completes."""

    held: Held


@dataclass
class RunState:
    cfg: ClientConfig
    ports: ClientPorts
    trainer: Trainer
    data: Dataset
    workdir: Path
    progress: Progress
    eval_data: Dataset | None = None
    inbox: Inbox = field(default_factory=Inbox)
    uploads: asyncio.Queue[PendingUpload | EndOfRun] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1)
    )
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    phases: dict[str, Phase] = field(default_factory=dict)  # per stage: trainer, uploader
    version: int | None = None
    corrupt_notices: dict[str, int] = field(default_factory=dict)  # failures per notice
    train_failures: int = 0  # notices in a row whose training raised
    # SecAgg phase notices for client/secagg_run.py, and their messages while handled
    secagg_notices: asyncio.Queue[tuple[SecAggNotice, str]] = field(default_factory=asyncio.Queue)
    secagg_receipts: set[str] = field(default_factory=set)
    privacy: LocalPrivacy | None = None  # local DP: the silo's own count and epsilon
    report: ClientReport = field(init=False)
    # The silo's own training thread. Not the loop's shared default executor: its few
    # threads are shared by everything in the process (several silos in the demo, the
    # embedded stack's handlers), and a long fit there would hold up the others.
    compute: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.report = ClientReport(self.cfg.task_name, self.cfg.client_id)
        self.compute = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"fedasync-train-{self.cfg.client_id}"
        )

    async def in_compute(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the silo's training thread; the loop keeps running."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.compute, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Release the training thread (a fit in progress finishes on its own)."""
        self.compute.shutdown(wait=False, cancel_futures=True)

    @property
    def phase(self) -> Phase:
        """What the heartbeat reports: an upload in flight outranks the next training."""
        for phase in ("stopped", "uploading", "training", "downloading"):
            if phase in self.phases.values():
                return phase
        return "idle"
