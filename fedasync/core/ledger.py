"""The event ledger: what the server reacted to, in the order it applied it (pure).

Every decision the server takes is recorded on a DynamoDB item by a conditional write:
the task (config, model spec, initial model), each update with its verdict (and, in async
mode, the position `seq` at which it was absorbed, its staleness and weight, and the
SHA-256 of the version it produced), each sync round with the updates it aggregated
(`members`) and the SHA-256 of the version it produced, and the final model. The ledger
is those items turned into JSON lines, one event per line, each with a stable `key`:

    {"kind": "task", ...}     config, spec, initial model key and SHA-256, the head
    {"kind": "update", ...}   the client's record, verdict, reason, seq, staleness, weight
    {"kind": "round", ...}    sync: round id, members (sort keys), version, SHA-256
    {"kind": "version", ...}  every committed global version and its SHA-256
    {"kind": "evaluation", ...} per base version: the example-weighted mean of each eval_*
                              metric the accepted updates report (`fedasync.core.evals`)
    {"kind": "final", ...}    the final version, its SHA-256 and why the task ended

The same function builds it from the embedded stack at the end of a run and from a real
deployment's table (`fedasync events export`), so `fedasync replay` reads both.
Order on disk is the application order (sync by round, async by `seq`), but readers must
not depend on it: `parse_ledger` de-duplicates by `key` (a duplicated line is harmless,
a conflicting one is an error) and `fedasync.core.replay` orders by round and `seq`.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fedasync.core import keys
from fedasync.core.errors import SchemaError
from fedasync.core.evals import eval_means
from fedasync.core.items.ledger import (
    KIND,
    KINDS,
    LEDGER_SCHEMA_VERSION,
    Entry,
    Event,
    _int_or_none,
    evaluation_entry,
    final_entry,
    raw,
    round_entry,
    task_entry,
    update_entry,
    version_entry,
)

__all__ = [
    "KINDS",
    "LEDGER_SCHEMA_VERSION",
    "Event",
    "build_ledger",
    "dump_ledger",
    "parse_ledger",
    "raw",
]


def _evaluation_events(updates: list[Event], head: Event) -> list[Event]:
    sync = head["config"]["mode"] == "sync"
    return [evaluation_entry(entry, sync) for entry in eval_means(updates)]


def build_ledger(items: Iterable[Mapping[str, Any]], *, bucket: str | None = None) -> list[Event]:
    """All items of one task (any order) → its ledger, in application order."""
    by_sk = {str(i["sk"]): i for i in items}
    task = by_sk.get(keys.TASK_SK)
    if task is None:
        raise SchemaError("no TASK item: the items do not belong to a task")
    head = task_entry(task, bucket)
    updates = [update_entry(i) for sk, i in by_sk.items() if sk.startswith(keys.UPDATE_PREFIX)]
    rounds = [
        r
        for sk, i in by_sk.items()
        if sk.startswith(keys.ROUND_PREFIX)
        for r in [round_entry(i)]
        if r is not None
    ]
    body: list[tuple[tuple[float, int, float, str], Event]] = []
    if head["config"]["mode"] == "sync":
        for u, e in ((u, Entry.from_event(u)) for u in updates):
            round_id = _int_or_none(e.round_id) or 0  # a silo's junk sorts first
            body.append(((round_id, 0, e.decided_at or 0.0, str(e.sk)), u))
        for r, e in ((r, Entry.from_event(r)) for r in rounds):
            body.append(((e.round_id, 1, 0.0, ""), r))
            body.append(((e.round_id, 2, 0.0, ""), version_entry(e.version, e.sha256, e.closed_at)))
    else:
        # accepted updates by seq; a rejected one after the accepted it followed in time
        read = [(u, Entry.from_event(u)) for u in updates]
        accepted_at = sorted(e.decided_at or 0.0 for _, e in read if e.seq is not None)
        for u, e in read:
            accepted_before = bisect.bisect_right(accepted_at, e.decided_at or 0.0)
            order = e.seq if e.seq is not None else accepted_before + 0.5
            body.append(((order, 0, e.decided_at or 0.0, str(e.sk)), u))
            if e.version_sha256 is not None and e.applied_version is not None:
                made = version_entry(e.applied_version, e.version_sha256, e.decided_at)
                body.append(((order, 1, 0.0, ""), made))
    body.sort(key=lambda pair: pair[0])
    events = [head, *(event for _, event in body), *_evaluation_events(updates, head)]
    final = final_entry(task)
    if final is not None:
        events.append(final)
    return events


def dump_ledger(events: Iterable[Event]) -> str:
    return "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in events)


def parse_ledger(lines: Iterable[str]) -> list[Event]:
    """JSON lines → events, de-duplicated by `key`; malformed lines are clear errors."""
    seen: dict[str, Event] = {}
    order: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise SchemaError(f"ledger line {number}: not valid JSON ({exc})") from exc
        if not isinstance(event, dict) or event.get(KIND) not in KINDS or "key" not in event:
            raise SchemaError(
                f"ledger line {number}: expected an object with 'key' and a 'kind' in {KINDS}"
            )
        key = str(event["key"])
        if key in seen:
            if seen[key] != event:
                raise SchemaError(
                    f"ledger line {number}: {key!r} appears twice with different content"
                )
            continue
        seen[key] = event
        order.append(key)
    return [seen[k] for k in order]
