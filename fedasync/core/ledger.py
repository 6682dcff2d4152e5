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

import base64
import bisect
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError
from fedasync.core.evals import eval_means
from fedasync.core.verdicts import VERDICT_ATTRIBUTES

LEDGER_SCHEMA_VERSION = 1
KINDS = ("task", "update", "round", "version", "evaluation", "final")
Event = dict[str, Any]


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


def _task_event(task: Mapping[str, Any], bucket: str | None) -> Event:
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


# What the server writes on a rejected update; any other verdict attribute on it
# (`seq`, `weight`, ...) was put there by the silo and is part of what it sent.
_REJECTION_ATTRIBUTES = ("verdict", "reason", "detail", "decided_at", "superseded", "attributed")


def _update_event(item: Mapping[str, Any]) -> Event:
    """One update: the silo's fields as received (raw), the server's typed.

    Only an accepted update carries the server's position (`seq`, `staleness`, `weight`,
    `applied_version`, `version_sha256`); a rejected item may hold anything, since its
    sender wrote it, and is carried as it was received so that export never fails."""
    accepted = item.get("verdict") == "accepted"
    server = VERDICT_ATTRIBUTES if accepted else _REJECTION_ATTRIBUTES
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


def _round_event(item: Mapping[str, Any]) -> Event | None:
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


def _version(version: int, sha: str, at: float | None) -> Event:
    return {"kind": "version", "key": f"version:{version}", "version": version, "sha256": sha,
            "committed_at": at}  # fmt: skip


def _evaluation_events(updates: list[Event], head: Event) -> list[Event]:
    """Derived, not reacted to (replay skips them): what the silos said of each version."""
    sync = head["config"]["mode"] == "sync"
    return [
        {
            "kind": "evaluation",
            "key": f"evaluation:{entry['version']}",
            "version": entry["version"],
            "round_id": entry["version"] if sync else None,
            "metrics": entry["metrics"],
        }
        for entry in eval_means(updates)
    ]


def build_ledger(items: Iterable[Mapping[str, Any]], *, bucket: str | None = None) -> list[Event]:
    """All items of one task (any order) → its ledger, in application order."""
    by_sk = {str(i["sk"]): i for i in items}
    task = by_sk.get(keys.TASK_SK)
    if task is None:
        raise SchemaError("no TASK item: the items do not belong to a task")
    head = _task_event(task, bucket)
    updates = [_update_event(i) for sk, i in by_sk.items() if sk.startswith(keys.UPDATE_PREFIX)]
    rounds = [
        r
        for sk, i in by_sk.items()
        if sk.startswith(keys.ROUND_PREFIX)
        for r in [_round_event(i)]
        if r is not None
    ]
    body: list[tuple[tuple[float, int, float, str], Event]] = []
    if head["config"]["mode"] == "sync":
        for u in updates:
            round_id = _int_or_none(u["round_id"]) or 0  # a silo's junk sorts first
            body.append(((round_id, 0, u["decided_at"] or 0.0, u["sk"]), u))
        for r in rounds:
            body.append(((r["round_id"], 1, 0.0, ""), r))
            body.append(
                ((r["round_id"], 2, 0.0, ""), _version(r["version"], r["sha256"], r["closed_at"]))
            )
    else:
        # accepted updates by seq; a rejected one after the accepted it followed in time
        accepted_at = sorted(u["decided_at"] or 0.0 for u in updates if u["seq"] is not None)
        for u in updates:
            accepted_before = bisect.bisect_right(accepted_at, u["decided_at"] or 0.0)
            order = u["seq"] if u["seq"] is not None else accepted_before + 0.5
            body.append(((order, 0, u["decided_at"] or 0.0, u["sk"]), u))
            if u["version_sha256"] is not None and u["applied_version"] is not None:
                body.append(
                    ((order, 1, 0.0, ""), _version(u["applied_version"], u["version_sha256"], u["decided_at"]))
                )  # fmt: skip
    body.sort(key=lambda pair: pair[0])
    events = [head, *(event for _, event in body), *_evaluation_events(updates, head)]
    if task.get("finished"):
        events.append(
            {
                "kind": "final",
                "key": "final",
                "version": _num(task.get("final_version")),
                "sha256": task.get("final_sha256"),
                "reason": task.get("finished"),
            }
        )
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
        if not isinstance(event, dict) or event.get("kind") not in KINDS or "key" not in event:
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
