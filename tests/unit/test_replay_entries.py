"""Replay reads the ledger through `fedasync.core.items.ledger.Entry` (issue 20, item 3): a
ledger written by the entry builders replays, and what a line lacks is said, not a crash."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fedasync.core import codec
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError
from fedasync.core.items import ledger
from fedasync.core.keys import global_key, local_key, update_sk
from fedasync.core.replay import replay

SPEC = [["w", [2], "float32"]]


def _blob(values: list[float]) -> bytes:
    return codec.encode({"w": np.array(values, np.float32)})


def sync_ledger() -> tuple[list[dict[str, Any]], dict[str, bytes], str]:
    """One FedAvg round of two updates: (1, 2) on 1 example and (3, 4) on 3, so version 1
    is ((1 + 9) / 4, (2 + 12) / 4) = (2.5, 3.5), exact in float32."""
    cfg = TaskConfig.parse({"task_name": "t", "clients": ["a", "b"], "rounds": 1})
    initial, expected = _blob([0.0, 0.0]), _blob([2.5, 3.5])
    sha0, sha1 = codec.sha256_bytes(initial), codec.sha256_bytes(expected)
    objects = {global_key("t", 0): initial}
    updates = []
    for client, values, n in (("a", [1.0, 2.0], 1), ("b", [3.0, 4.0], 3)):
        blob, key = _blob(values), local_key("t", client, 0, "u1")
        objects[key] = blob
        record = {
            "kind": "update",
            "task_name": "t",
            "client_id": client,
            "update_id": "u1",
            "base_version": 0,
            "round_id": 0,
            "s3_key": key,
            "sha256": codec.sha256_bytes(blob),
            "size_bytes": len(blob),
            "num_examples": n,
        }
        item = {**record, "sk": update_sk(client, "u1", 0), "verdict": "accepted"}
        updates.append(ledger.update_entry(item))
    task = {
        "config": cfg.model_dump_json(),
        "spec": json.dumps(SPEC),
        "initial_sha256": sha0,
        "head_version": 1,
        "head_sha256": sha1,
    }
    round_item = {
        "round_id": 0,
        "closed": True,
        "members": [u["sk"] for u in updates],
        "result": {"closed": True, "version": 1, "sha256": sha1},
    }
    events = [ledger.task_entry(task, None), *updates, ledger.round_entry(round_item),
              ledger.version_entry(1, sha1, None)]  # fmt: skip
    return [e for e in events if e is not None], objects, sha1


def test_a_sync_round_written_by_the_entry_builders_replays_to_its_head() -> None:
    # GIVEN the ledger of one FedAvg round, written by the ledger's entry builders
    events, objects, sha1 = sync_ledger()
    # WHEN it is replayed
    result = replay(events, objects.__getitem__)
    # THEN version 1 is rebuilt with the recorded SHA-256 from both updates, at the head
    assert result.ok, result.problems
    assert [(c.version, c.recorded, c.rebuilt) for c in result.checks] == [(1, sha1, sha1)]
    assert (result.applied, result.final_version, result.final_sha256) == (2, 1, sha1)


def test_a_member_missing_from_the_ledger_is_a_problem_with_its_key() -> None:
    # GIVEN the ledger without the update of client 'b'
    events, objects, _ = sync_ledger()
    events = [e for e in events if e.get("client_id") != "b"]
    # WHEN it is replayed  THEN the round says which member is missing, and nothing is rebuilt
    result = replay(events, objects.__getitem__)
    assert not result.ok
    assert "round 0 aggregated 'UPDATE#00000000#b', missing from the ledger" in result.problems
    assert result.checks == []


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (lambda e: {k: v for k, v in e.items() if k != "kind"}, "a ledger line has no 'kind'"),
        (lambda e: {k: v for k, v in e.items() if k != "record"} if e["kind"] == "update" else e,
         "update entry 'update:UPDATE#00000000#a' carries no record"),
        (lambda e: {k: v for k, v in e.items() if k != "initial"} if e["kind"] == "task" else e,
         "the task event of 't' names no initial model"),
    ],
)  # fmt: skip
def test_a_line_lacking_what_replay_reads_is_refused_with_the_reason(
    broken: Any, reason: str
) -> None:
    # GIVEN a ledger one of whose lines lacks its kind, an update its record, the task
    # its initial model
    events, objects, _ = sync_ledger()
    # WHEN it is replayed  THEN a SchemaError says what is missing (no KeyError)
    with pytest.raises(SchemaError, match=reason):
        replay([broken(e) for e in events], objects.__getitem__)
