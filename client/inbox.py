"""Notices received and not yet finished; the newest global version always wins.

SNS and SQS deliver at least once and in no particular order. The inbox collapses that:
every message carrying the same notice joins one entry (so a duplicate never becomes a
second update), a notice older than one already taken is superseded (its messages are
deleted: a newer global exists, training on the old one would only add staleness), and
the trainer always takes the newest waiting notice. A final notice outranks everything.
In async mode a notice also carries the server's update count (`seq`): the same version
with a newer seq is a newer notice, so a silo that has finished trains again at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from fedasync.core.messages import GlobalModelNotice


class Offer(Enum):
    NEW = "new"  # waits for the trainer
    JOINED = "joined"  # same notice as one waiting or in progress: one update for both
    DONE = "done"  # this version is already finished or superseded: delete the message


@dataclass
class Held:
    """One notice and the receipt handles of every SQS message that carried it."""

    notice: GlobalModelNotice
    receipts: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.notice.version


def _rank(notice: GlobalModelNotice) -> tuple[bool, int, int]:
    """Final first, then the newest version, then (async) the newest go-ahead on it."""
    return (notice.final, notice.version, -1 if notice.seq is None else notice.seq)


class Inbox:
    """Shared by the poller (offers), the trainer (takes) and the heartbeat (receipts)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[bool, int, int], Held] = {}
        self._active: dict[tuple[bool, int, int], Held] = {}
        self._floor: tuple[bool, int, int] | None = None  # rank of the newest notice taken
        # released unfinished (see `release`): their redelivery is new again, not done
        self._retry: set[tuple[bool, int, int]] = set()
        self._changed = asyncio.Event()
        self._incarnation: str | None = None  # of the task whose notices these are

    @property
    def incarnation(self) -> str | None:
        return self._incarnation

    def offer(self, notice: GlobalModelNotice, receipt: str) -> Offer:
        if notice.incarnation is not None and notice.incarnation != self._incarnation:
            if self._incarnation is not None:
                # the task was created again under its name (a new stack, say): its
                # versions start over, so nothing taken before ranks above them
                self._floor, self._retry = None, set()
                self._waiting.clear()
            self._incarnation = notice.incarnation
        rank = _rank(notice)
        for pool in (self._active, self._waiting):
            if rank in pool:
                pool[rank].receipts.append(receipt)
                return Offer.JOINED
        if self._floor is not None and rank <= self._floor and rank not in self._retry:
            return Offer.DONE
        self._retry.discard(rank)
        self._waiting[rank] = Held(notice, [receipt])
        self._changed.set()
        return Offer.NEW

    async def take_newest(self) -> tuple[Held, list[Held]]:
        """Wait for a notice; return the newest and the waiting ones it supersedes."""
        while not self._waiting:
            self._changed.clear()
            await self._changed.wait()
        rank = max(self._waiting)
        held = self._waiting.pop(rank)
        superseded = list(self._waiting.values())
        self._waiting.clear()
        self._floor = rank
        self._retry = {r for r in self._retry if r > rank}  # older ones are superseded
        self._active[rank] = held
        return held, superseded

    def finish(self, held: Held) -> list[str]:
        """The notice is fully handled; returns every receipt to delete."""
        self._active.pop(_rank(held.notice), None)
        return list(held.receipts)

    def release(self, held: Held) -> list[str]:
        """Give a notice up unfinished (its model could not be fetched): its messages are
        neither deleted nor kept invisible any longer, and when SQS delivers one again it
        is taken as new, unless a newer notice has been taken meanwhile."""
        rank = _rank(held.notice)
        self._active.pop(rank, None)
        self._retry.add(rank)
        return list(held.receipts)

    def receipts(self) -> list[str]:
        """Receipts of every message held (waiting or in progress): keep them invisible."""
        pools = (*self._active.values(), *self._waiting.values())
        return [r for held in pools for r in held.receipts]
