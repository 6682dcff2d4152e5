"""A submission as the server knows it: the inbox item a silo wrote, and the server's verdict.

Two trust domains (DESIGN.md): the inbox table holds what silos write (update records,
heartbeats); the server table holds what the server decides. The decision on the inbox
item `UPDATE#...` is the server item `VERDICT#UPDATE#...` and it carries the submission
it was taken on (`submitted`: the record as the server read and validated it, with its
SHA-256) and a digest of the inbox item it read (`item_digest`).

Once decided, the inbox item is never read again for that decision: the record fields
of a decided submission come from `submitted`, never from the inbox item, so a silo that
rewrites or re-puts its item changes nothing the server decided (B1, B3). The one way a
rewritten item counts is as a *new* submission: an item whose content differs from the
one a rejection was taken on (`resubmitted`), so a squatter's junk rejected under a
victim's key does not cost the victim its slot (B4). An accepted decision is final.

Pure: dicts in, dicts out. The attribute names are `fedasync.core.items.verdict`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fedasync.core.items import verdict as v
from fedasync.core.items.verdict import (
    BOOKKEEPING,
    REOPENED,
    VERDICT_ATTRIBUTES,
    Verdict,
    superseded_entry,
)
from fedasync.core.messages import UpdateRecord

PK, SK = "task_name", "sk"

RECORD_FIELDS = frozenset(UpdateRecord.model_fields)


def wire_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an inbox item that is the silo's record (no keys, no server attributes)."""
    return {k: v for k, v in item.items() if k not in (PK, SK, *VERDICT_ATTRIBUTES)}


def item_digest(item: Mapping[str, Any]) -> str:
    """SHA-256 of the inbox item's content (record fields and extras, keys excluded)."""
    text = json.dumps(wire_fields(item), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decided_on(item: Mapping[str, Any]) -> dict[str, Any]:
    """What a verdict records of the submission it decides: the record as read (with the
    values of any server attribute the silo wrote, as it wrote them: the ledger carries a
    rejected item as it was received), and its digest."""
    submitted = {**wire_fields(item), **v.forged_values(item)}
    return {"submitted": submitted, v.ITEM_DIGEST: item_digest(item)}


def decided_on_record(record: UpdateRecord, item: Mapping[str, Any] | None) -> dict[str, Any]:
    """For an acceptance: the validated record itself (and the digest of the item read)."""
    return {
        "submitted": wire_fields(record.item()),
        v.ITEM_DIGEST: item_digest(item if item is not None else record.item()),
    }


def merge(sk: str, inbox: Mapping[str, Any] | None, verdict: Mapping[str, Any] | None) -> Any:
    """The submission at update key `sk` as the server knows it (None: neither exists).

    Decided: the record as `submitted` (the inbox item only when a verdict predates
    `submitted`) with the verdict's attributes. Undecided (no verdict, or one reopened
    for a new submission and not decided again yet): the inbox item without any
    server attribute it holds; their names, if any, under `forged_attributes`, so the
    decision that follows rejects it (`parse_update_item`)."""
    if verdict is not None and verdict.get(v.VERDICT):
        fields = verdict.get("submitted")
        base = dict(fields) if isinstance(fields, Mapping) else wire_fields(inbox or {})
        task_name = verdict.get(PK) or (inbox or {}).get(PK)
        decision = {k: v for k, v in verdict.items() if k not in (PK, SK, *BOOKKEEPING)}
        return {**base, PK: task_name, SK: sk, **decision}
    if inbox is None:
        return None
    merged = {**wire_fields(inbox), PK: inbox.get(PK), SK: sk}
    forged = sorted(set(inbox) & set(VERDICT_ATTRIBUTES))
    if forged:
        merged.update(v.forged_fields(inbox, forged))
    return merged


def settles(item: Mapping[str, Any]) -> bool:
    """The decision is its client's word for a sync round: accepted, or rejected for what
    its own verified object holds (`attributed`). Any other rejection (junk, a key or
    object that is not the client's, a bad checksum) any silo may have caused under that
    client's key, so the round does not close early on it: it waits for the client's own
    record (a new submission) or for its deadline."""
    return Verdict.from_item(item).settles


def resubmitted(inbox: Mapping[str, Any] | None, verdict: Mapping[str, Any] | None) -> bool:
    """The inbox item is a new submission after a rejection: it differs from the item that
    rejection was taken on. An accepted decision is never reopened."""
    if inbox is None or verdict is None or not Verdict.from_item(verdict).rejected:
        return False
    return Verdict.from_item(verdict).item_digest not in (None, item_digest(inbox))


__all__ = [
    "REOPENED",
    "VERDICT_ATTRIBUTES",
    "decided_on",
    "decided_on_record",
    "item_digest",
    "merge",
    "resubmitted",
    "settles",
    "superseded_entry",
    "wire_fields",
]
