"""The ledger (pure): built from items in any order, parsed with duplicates, hostile keys refused."""

from __future__ import annotations

import json
import random

import pytest

from fedasync.core.config import TaskConfig
from fedasync.core.errors import RegistryError, SchemaError
from fedasync.core.ledger import build_ledger, dump_ledger, parse_ledger
from fedasync.ops.events import folder_loader, object_keys

SHA = "ab" * 32


def _items(mode: str) -> list[dict]:
    cfg = TaskConfig(task_name="t1", mode=mode, clients=("a", "b"), rounds=2, min_clients=1)
    task = {
        "task_name": "t1",
        "sk": "TASK",
        "config": cfg.model_dump_json(),
        "spec": json.dumps([["w", [2], "float32"]]),
        "initial_sha256": SHA,
        "finished": "max_versions",
        "final_version": 2,
        "final_sha256": SHA,
    }
    if mode == "async":
        updates = [
            {"sk": f"UPDATE#{c}-b{i:08d}", "client_id": c, "update_id": f"{c}-b{i:08d}",
             "base_version": i, "verdict": "accepted", "seq": seq, "applied_version": seq,
             "version_sha256": SHA, "decided_at": float(seq), "s3_key": f"t1/local/{c}/x"}
            for seq, (c, i) in enumerate([("a", 0), ("b", 0)], start=1)
        ]  # fmt: skip
        updates.append({"sk": "UPDATE#b-b00000009", "client_id": "b", "verdict": "rejected",
                        "reason": "stale", "decided_at": 1.5, "base_version": 9})  # fmt: skip
        return [task, *updates]
    updates = [
        {"sk": f"UPDATE#{r:08d}#{c}", "client_id": c, "round_id": r, "base_version": r,
         "verdict": "accepted", "decided_at": float(r), "s3_key": f"t1/local/{c}/{r}"}
        for r in range(2) for c in "ab"
    ]  # fmt: skip
    rounds = [
        {"sk": f"ROUND#{r:08d}", "round_id": r, "closed": True, "members": [f"UPDATE#{r:08d}#a"],
         "result": {"closed": True, "version": r + 1, "sha256": SHA}}
        for r in range(2)
    ]  # fmt: skip
    return [task, *updates, *rounds]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_ledger_is_in_application_order_whatever_the_item_order(mode):
    items = _items(mode)
    expected = build_ledger(items)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert build_ledger(shuffled) == expected
    kinds = [e["kind"] for e in expected]
    assert kinds[0] == "task"
    assert kinds[-1] == "final"
    assert kinds.count("version") == 2
    if mode == "async":
        # the rejected update decided at t=1.5 sits between the two accepted ones
        assert [e.get("seq") for e in expected if e["kind"] == "update"] == [1, None, 2]
    else:
        # every round's updates come before the round that aggregated them
        sks = [e.get("sk") or e["kind"] for e in expected[1:-1]]
        assert sks.index("UPDATE#00000000#b") < sks.index("round") < sks.index("UPDATE#00000001#a")


def test_server_attributes_never_leak_into_the_clients_record():
    update = next(e for e in build_ledger(_items("async")) if e["kind"] == "update")
    assert not {"verdict", "seq", "version_sha256", "sk"} & set(update["record"])


def test_a_ledger_without_a_task_is_refused():
    with pytest.raises(SchemaError, match="no TASK item"):
        build_ledger([{"sk": "UPDATE#x"}])


def test_parsing_drops_exact_duplicates_and_refuses_conflicts():
    text = dump_ledger(build_ledger(_items("sync")))
    lines = text.splitlines()
    assert parse_ledger(lines + lines[:3]) == parse_ledger(lines)
    forged = json.loads(lines[1])
    forged["verdict"] = "rejected"
    with pytest.raises(SchemaError, match="appears twice with different content"):
        parse_ledger([*lines, json.dumps(forged)])
    with pytest.raises(SchemaError, match="line 1: expected an object"):
        parse_ledger(['{"kind": "party", "key": "x"}'])


def test_object_keys_cover_the_initial_model_the_accepted_updates_and_every_version():
    wanted = object_keys(build_ledger(_items("async")))
    assert wanted == [
        "t1/global/00000000.safetensors",
        "t1/local/a/x",
        "t1/local/b/x",
        "t1/global/00000001.safetensors",
        "t1/global/00000002.safetensors",
    ]


def test_the_folder_loader_refuses_keys_that_escape_its_folder(tmp_path):
    (tmp_path / "objs" / "t1").mkdir(parents=True)
    (tmp_path / "objs" / "t1" / "m").write_bytes(b"ok")
    (tmp_path / "secret").write_bytes(b"no")
    load = folder_loader(tmp_path / "objs")
    assert load("t1/m") == b"ok"
    for hostile in ("../secret", "/etc/passwd", "t1/../../secret"):
        with pytest.raises(SchemaError, match="escapes the objects folder"):
            load(hostile)
    with pytest.raises(RegistryError, match="is not in"):
        load("t1/missing")


HOSTILE = {
    "client_id": "b",
    "update_id": "junk",
    "num_examples": "many",
    "round_id": "one",
    "base_version": "zero",
    "metrics": {"acc": "high"},
    "blob": b"\x00\xff",
    "tags": {"x", "y"},
    # verdict attributes the silo put there itself (the server overwrote only its own)
    "seq": "seven",
    "weight": "heavy",
    "applied_version": [1],
    "verdict": "rejected",
    "reason": "schema",
    "detail": "UpdateRecord from client 'b' is malformed: num_examples: ...",
    "decided_at": 1.7,
}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rejected_item_is_carried_as_it_was_received(mode):
    # GIVEN a task whose table holds a rejected item with strings where numbers belong
    items = [*_items(mode), {"sk": "UPDATE#b-junk", **HOSTILE}]
    # WHEN its ledger is built, written and read back
    events = parse_ledger(dump_ledger(build_ledger(items)).splitlines())
    # THEN the item is there with the silo's values as received, not coerced
    [junk] = [e for e in events if e.get("sk") == "UPDATE#b-junk"]
    assert (junk["num_examples"], junk["round_id"], junk["base_version"]) == ("many", "one", "zero")
    assert (junk["verdict"], junk["reason"]) == ("rejected", "schema")
    # AND nothing the silo wrote passes for the server's position
    assert (junk["seq"], junk["weight"], junk["applied_version"]) == (None, None, None)
    record = junk["record"]
    assert (record["seq"], record["weight"], record["applied_version"]) == ("seven", "heavy", [1])
    assert record["blob"] == {"base64": "AP8="}
    assert record["tags"] == ["x", "y"]
    assert record["metrics"] == {"acc": "high"}
    # AND the server's own events are untouched by it
    assert events == parse_ledger(dump_ledger(build_ledger(items)).splitlines())
    assert [e["version"] for e in events if e["kind"] == "version"] == [1, 2]
