"""The report's data: the run's summary and ledger (one dict per line of `events.jsonl`),
read defensively. Records are untrusted: a field of the wrong type or a non-finite
number is missing, never an error."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from fedasync.core.items.ledger import Entry, entries
from fedasync.core.items.verdict import ACCEPTED, REJECTED


def number(value: Any) -> float | None:
    """A finite int or float, as a float; anything else (a bool, NaN, text) is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None  # NaN is missing, not a point


def events_of(ledger: Iterable[Any], kind: str) -> list[Mapping[str, Any]]:
    """The ledger's events of one kind (lines that are not mappings are skipped)."""
    return [e for e in ledger if isinstance(e, Mapping) and Entry.from_event(e).kind == kind]


def curve(summary: Mapping[str, Any], x_key: str) -> list[tuple[float, float]]:
    """The summary's accuracy curve as sorted (x_key, accuracy) points."""
    points = []
    for point in summary.get("accuracy_curve") or []:
        if not isinstance(point, Mapping):
            continue
        x, y = number(point.get(x_key)), number(point.get("accuracy"))
        if x is not None and y is not None:
            points.append((x, y))
    return sorted(points)


def contributions(ledger: Iterable[Any]) -> dict[str, tuple[int, int]]:
    """Per client: (accepted, rejected) updates, from the ledger's update events."""
    counts: dict[str, Counter[str]] = {}
    for event in entries(ledger, "update"):
        client = str(event.client_id or "(unknown)")
        counts.setdefault(client, Counter())[str(event.verdict)] += 1
    ordered = sorted(counts, key=_natural)
    return {c: (counts[c][ACCEPTED], counts[c][REJECTED]) for c in ordered}


def _natural(text: str) -> list[tuple[int, int | str]]:
    """'silo-2' before 'silo-10'."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t]


def staleness(summary: Mapping[str, Any], ledger: Iterable[Any]) -> list[int]:
    """Staleness of accepted updates: the ledger's, else the summary's list."""
    from_ledger = [
        int(s) for e in entries(ledger, "update") if e.accepted and (s := e.staleness) is not None
    ]
    if from_ledger:
        return from_ledger
    return [int(s) for s in summary.get("staleness") or [] if number(s) is not None]


def round_durations(ledger: Iterable[Any]) -> list[tuple[int, float]]:
    """(round, seconds): closed_at − opened_at of round events, else the gaps between
    successive versions' commit times (round r produces version r + 1)."""
    events = list(ledger)
    spans = []
    for event in entries(events, "round"):
        opened, closed = event.opened_at, event.closed_at
        rid = number(event.round_id)
        if rid is not None and opened is not None and closed is not None and closed >= opened:
            spans.append((int(rid), closed - opened))
    if spans:
        return sorted(spans)
    commits = {}
    for event in entries(events, "version"):
        version, at = number(event.version), number(event.committed_at)
        if version is not None and at is not None:
            commits[int(version)] = at
    return [
        (v - 1, commits[v] - commits[v - 1])
        for v in sorted(commits)
        if v - 1 in commits and commits[v] >= commits[v - 1]
    ]
