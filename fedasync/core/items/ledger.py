"""The event ledger's entries (`fedasync.core.ledger`): one builder per kind from the items
the server decided (`task_entry`, `update_entry`, `round_entry`, `version_entry`,
`final_entry`), and `Entry` to read one back. The ledger's keys are written here only."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.items.verdict import REJECTION_ATTRIBUTES, VERDICT_ATTRIBUTES

LEDGER_SCHEMA_VERSION = 1
KIND = "kind"
KINDS = ("task", "update", "round", "version", "evaluation", "final")
Event = dict[str, Any]
# Every key of a ledger entry, for the literal scan of `tests/unit/test_item_literals.py`.
ENTRY_KEYS = (
    KIND, "key", "schema_version", "task_name", "config", "spec", "initial", "bucket",
    "created_at", "head", "sk", "client_id", "update_id", "round_id", "base_version",
    "num_examples", "verdict", "reason", "detail", "seq", "staleness", "weight",
    "applied_version", "version_sha256", "decided_at", "discarded", "record", "members",
    "version", "sha256", "optimizer_sha256", "dp", "secagg", "opened_at", "closed_at",
    "committed_at", "metrics",
)  # fmt: skip


# A rejected update's item may hold anything its client wrote (its `record` keeps it as
# written): a field that is not a number is None in the event, never a failed export.
def _num(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def task_entry(task: Mapping[str, Any], bucket: str | None) -> Event:
    cfg = TaskConfig.model_validate_json(task["config"])
    name = cfg.task_name
    return {
        "kind": "task",
        "key": f"task:{name}",
        "schema_version": LEDGER_SCHEMA_VERSION,
        "task_name": name,
        "config": json.loads(cfg.model_dump_json()),
        "spec": json.loads(str(task["spec"])),
        "initial": {
            "version": 0,
            "s3_key": keys.global_key(name, 0),
            "sha256": task.get("initial_sha256"),
        },
        "bucket": bucket,
        "created_at": _float(task.get("created_at")),
        # the head the server recorded: a replay must end there (`core.replay`)
        "head": {
            "version": _int_or_none(task.get("head_version")),
            "sha256": task.get("head_sha256"),
        },
    }


def _int_or_none(value: Any) -> int | None:
    """An integer the server wrote, or None: never a crash on what a silo put there."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def raw(value: Any) -> Any:
    """A silo-written value as received, made JSON-safe, never coerced: bytes as base64,
    sets as sorted lists, non-finite floats and other types as their text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): raw(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((raw(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [raw(v) for v in value]
    return str(value)


def update_entry(item: Mapping[str, Any]) -> Event:
    """One update: the silo's fields as received (raw), the server's typed.

    Only an accepted update carries the server's position (`seq`, `staleness`, `weight`,
    `applied_version`, `version_sha256`); a rejected item may hold anything, since its
    sender wrote it, and is carried as it was received so that export never fails."""
    accepted = item.get("verdict") == "accepted"
    server = VERDICT_ATTRIBUTES if accepted else REJECTION_ATTRIBUTES
    record = {
        k: raw(v) for k, v in item.items() if k not in server and k not in ("sk", "expires_at")
    }
    position = item if accepted else {}
    return {
        "kind": "update",
        "key": f"update:{item['sk']}",
        "sk": str(item["sk"]),
        "client_id": raw(item.get("client_id")),
        "update_id": raw(item.get("update_id")),
        "round_id": raw(item.get("round_id")),
        "base_version": raw(item.get("base_version")),
        "num_examples": raw(item.get("num_examples")),
        "verdict": raw(item.get("verdict")),
        "reason": raw(item.get("reason")),
        "detail": raw(item.get("detail")),
        "seq": _int_or_none(position.get("seq")),
        "staleness": _int_or_none(position.get("staleness")),
        "weight": _float_or_none(position.get("weight")),
        "applied_version": _int_or_none(position.get("applied_version")),
        "version_sha256": raw(position.get("version_sha256")),
        "decided_at": _float_or_none(item.get("decided_at")),
        "discarded": raw(item.get("discarded")),
        "record": record,
    }


def round_entry(item: Mapping[str, Any]) -> Event | None:
    result = item.get("result") or {}
    if not item.get("closed") or not result.get("closed"):
        return None
    return {
        "kind": "round",
        "key": f"round:{int(item['round_id'])}",
        "round_id": int(item["round_id"]),
        "members": [str(m) for m in item.get("members", [])],
        "version": int(result["version"]),
        "sha256": str(result["sha256"]),
        **(
            {"optimizer_sha256": str(result["optimizer_sha256"])}
            if result.get("optimizer_sha256")
            else {}
        ),
        **({"dp": raw(result["dp"])} if isinstance(result.get("dp"), Mapping) else {}),
        **({"secagg": raw(result["secagg"])} if isinstance(result.get("secagg"), Mapping) else {}),
        "opened_at": _float(item.get("opened_at")),
        "closed_at": _float(item.get("closed_at")),
    }


def version_entry(version: int, sha: str, at: float | None) -> Event:
    return {"kind": "version", "key": f"version:{version}", "version": version, "sha256": sha,
            "committed_at": at}  # fmt: skip


def evaluation_entry(entry: Mapping[str, Any], sync: bool) -> Event:
    """Derived, not reacted to (replay skips them): what the silos said of a version
    (`fedasync.core.evals.eval_means`)."""
    return {
        KIND: "evaluation",
        "key": f"evaluation:{entry['version']}",
        "version": entry["version"],
        "round_id": entry["version"] if sync else None,
        "metrics": entry["metrics"],
    }


def final_entry(task: Mapping[str, Any]) -> Event | None:
    """The final model, once the task finished (None: not finished)."""
    if not task.get("finished"):
        return None
    return {
        KIND: "final",
        "key": "final",
        "version": _num(task.get("final_version")),
        "sha256": task.get("final_sha256"),
        "reason": task.get("finished"),
    }


@dataclass(frozen=True)
class Entry:
    """One ledger entry as read back (a line of events.jsonl): its kind and the fields its
    readers use; whatever is absent is None (an entry of another kind lacks them)."""

    kind: str | None
    key: str | None
    sk: str | None = None
    client_id: Any = None
    verdict: str | None = None
    reason: Any = None
    detail: Any = None
    seq: int | None = None
    staleness: int | None = None
    weight: float | None = None
    applied_version: int | None = None
    version_sha256: Any = None
    decided_at: float | None = None
    discarded: Any = None
    record: Mapping[str, Any] | None = None
    round_id: Any = None
    version: Any = None
    sha256: Any = None
    dp: Any = None
    secagg: Any = None
    members: tuple[str, ...] = ()
    opened_at: float | None = None
    closed_at: float | None = None
    task_name: str | None = None  # a task entry's
    initial: Mapping[str, Any] | None = None  # a task entry's: the initial model's key, SHA-256
    config: Any = None  # a task entry's: the TaskConfig as JSON data
    spec: Any = None  # a task entry's: the model spec, [name, shape, dtype] per tensor
    head: Mapping[str, Any] | None = None  # a task entry's: the head the server recorded
    optimizer_sha256: Any = None  # a round entry's: the server optimizer state after it
    metrics: Any = None  # an evaluation entry's
    committed_at: Any = None  # a version entry's

    @classmethod
    def from_event(cls, e: Mapping[str, Any]) -> Entry:
        record = e.get("record")
        return cls(
            kind=str(e[KIND]) if e.get(KIND) is not None else None,
            key=str(e["key"]) if e.get("key") is not None else None,
            sk=str(e["sk"]) if e.get("sk") is not None else None,
            client_id=e.get("client_id"),
            verdict=str(e["verdict"]) if e.get("verdict") is not None else None,
            reason=e.get("reason"),
            detail=e.get("detail"),
            seq=_int_or_none(e.get("seq")),
            staleness=_int_or_none(e.get("staleness")),
            weight=_float_or_none(e.get("weight")),
            applied_version=_int_or_none(e.get("applied_version")),
            version_sha256=e.get("version_sha256"),
            decided_at=_float_or_none(e.get("decided_at")),
            discarded=e.get("discarded"),
            record=dict(record) if isinstance(record, Mapping) else None,
            round_id=e.get("round_id"),
            version=e.get("version"),
            sha256=e.get("sha256"),
            dp=e.get("dp"),
            secagg=e.get("secagg"),
            members=tuple(str(m) for m in e.get("members") or ()),
            opened_at=_float_or_none(e.get("opened_at")),
            closed_at=_float_or_none(e.get("closed_at")),
            task_name=str(e["task_name"]) if e.get("task_name") is not None else None,
            initial=dict(e["initial"]) if isinstance(e.get("initial"), Mapping) else None,
            config=e.get("config"),
            spec=e.get("spec"),
            head=dict(e["head"]) if isinstance(e.get("head"), Mapping) else None,
            optimizer_sha256=e.get("optimizer_sha256"),
            metrics=e.get("metrics"),
            committed_at=e.get("committed_at"),
        )

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    @property
    def rejected(self) -> bool:
        return self.verdict == "rejected"


def entries(ledger: Iterable[Any], kind: str | None = None) -> list[Entry]:
    """The ledger's entries (of one kind), skipping lines that are not mappings."""
    return [
        Entry.from_event(e)
        for e in ledger
        if isinstance(e, Mapping) and (kind is None or e.get(KIND) == kind)
    ]
