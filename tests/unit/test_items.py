"""The item models of fedasync/core/items: each reads hand-written items (today's shape and
an older build's), and what the builders write is, attribute for attribute, the item
written before the models existed (hand-written here, not taken from the code)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from fedasync.core import verdicts
from fedasync.core.items import ledger, round, task, verdict
from fedasync.core.items.ledger import Entry
from fedasync.core.items.round import RoundItem, RoundResult
from fedasync.core.items.task import TaskItem, TaskPeek
from fedasync.core.items.verdict import Verdict
from fedasync.core.messages import UpdateRecord

CONFIG = '{"task_name": "digits"}'
SPEC = '[["w", [2], "float32"]]'


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task.time, "time", lambda: 1000.0)


def test_new_task_item_is_the_item_task_start_wrote(frozen_clock: None) -> None:
    # GIVEN a task start with central DP (3 releases allowed)
    # WHEN the TASK item is built
    item = task.new_item(
        "digits", "TASK", config=CONFIG, spec=SPEC, sha="ab" * 32, size=136,
        incarnation="0a1b2c3d4e", releases=3,
    )  # fmt: skip
    # THEN it is the item `start_task` put before the models, attribute for attribute
    assert item == {
        "task_name": "digits",
        "sk": "TASK",
        "config": CONFIG,
        "spec": SPEC,
        "status": "STARTING",
        "head_version": 0,
        "head_sha256": "ab" * 32,
        "initial_sha256": "ab" * 32,
        "head_size": 136,
        "absorbed": 0,
        "buffered": 0,
        "buffer_weight": 0.0,
        "created_at": 1000.0,
        "incarnation": "0a1b2c3d4e",
        "attempt": 1,
        "attempts": [{"attempt": 1, "started_at": 1000.0}],
        "dp_release_limit": 3,
        "dp_releases": 0,
    }
    # AND it reads back as the values it was written with
    t = TaskItem.from_item("digits", item)
    assert (t.head_version, t.head_size, t.attempt, t.dp_release_limit) == (0, 136, 1, 3)
    assert (t.incarnation, t.finished, t.token, t.final_version) == ("0a1b2c3d4e", None, None, None)


def test_task_item_of_an_older_build_reads_with_every_fallback() -> None:
    # GIVEN a TASK item from a build before attempts, counters, status and DP existed
    old = {"task_name": "digits", "sk": "TASK", "config": CONFIG, "spec": SPEC,
           "head_sha256": "cd" * 32, "token": "", "finished": ""}  # fmt: skip
    # WHEN it is read
    t = TaskItem.from_item("digits", old)
    # THEN each missing attribute takes the value the readers gave it
    assert (t.status, t.head_version, t.head_size, t.absorbed, t.buffered) == (
        "STARTING", 0, 0, 0, 0
    )  # fmt: skip
    assert (t.attempt, t.attempts, t.incarnation) == (1, (), None)
    assert (t.token, t.finished, t.started_at, t.dp_release_limit) == (None, None, None, None)
    assert (t.waiting, t.recent_norms, t.refused, t.cause) == (frozenset(), (), None, None)
    # AND a watcher reads an absent TASK item without an error
    assert TaskPeek.from_item(None) == TaskPeek(None, None, None)


def test_task_writes_are_the_values_written_before() -> None:
    # GIVEN a finish, a sync round's commit and an async absorb
    # THEN each write's values are, by name and value, those the server wrote before
    assert task.finished("rounds", 3, "ef" * 32, 12.5) == {
        "finished": "rounds", "final_version": 3, "final_sha256": "ef" * 32, "finished_at": 12.5
    }  # fmt: skip
    assert task.head(4, "aa", 10) == {"head_version": 4, "head_sha256": "aa", "head_size": 10}
    assert task.counters(7, 2, 1.5, 3) == {
        "absorbed": 7, "buffered": 2, "buffer_weight": 1.5, "head_version": 3
    }  # fmt: skip
    assert task.refusal("non_finite", "NaN", 3, ["UPDATE#a"], 9.0) == {
        "global_refused": {"reason": "non_finite", "detail": "NaN", "version": 3,
                           "updates": ["UPDATE#a"], "at": 9.0}
    }  # fmt: skip
    values = task.refusal("non_finite", "NaN", 3, ["UPDATE#a", "UPDATE#b"], 9.0)
    task.add_discarded(values, ["UPDATE#old"])
    assert task.Refusal.in_values(values).updates == ("UPDATE#a", "UPDATE#old", "UPDATE#b")


def test_round_item_written_through_its_close_is_the_item_written_before() -> None:
    # GIVEN a round opened, sealed, claimed and closed through the builders
    result = round.closed_result(2, 3, 2, "ab" * 32, round.dropped(["c"]))
    item: dict[str, Any] = {"task_name": "digits", "sk": "ROUND#00000002"}
    for values in (
        round.opened("tok-1", 2, 10.0),
        round.seal(2),
        round.claimed(["UPDATE#00000002#a", "UPDATE#00000002#b"], 2),
        round.closed(result, 20.0),
    ):
        item.update(values)
    # THEN the item is the one the server wrote before the models
    assert item == {
        "task_name": "digits",
        "sk": "ROUND#00000002",
        "token": "tok-1",
        "round_id": 2,
        "opened_at": 10.0,
        "sealed": True,
        "members": ["UPDATE#00000002#a", "UPDATE#00000002#b"],
        "closed": True,
        "result": {"closed": True, "round_id": 2, "version": 3, "accepted": 2,
                   "sha256": "ab" * 32, "dropped": ["c"]},
        "closed_at": 20.0,
    }  # fmt: skip
    # AND it reads back as written
    r = RoundItem.from_item({**item, "settled": {"a", "b"}, "accepted_clients": {"a"}})
    assert (r.token, r.round_id, r.closed, r.is_sealed) == ("tok-1", 2, True, True)
    assert r.members == ("UPDATE#00000002#a", "UPDATE#00000002#b")
    assert (r.settled, r.accepted) == (frozenset({"a", "b"}), frozenset({"a"}))
    outcome = RoundResult.from_item(r.result)
    assert (outcome.closed, outcome.version, outcome.finished) == (True, 3, False)


def test_round_item_of_an_older_build_and_an_absent_one() -> None:
    # GIVEN a round an older build closed without a result, and a round not opened yet
    old = RoundItem.from_item({"round_id": 1, "closed": True})
    none = RoundItem.from_item(None)
    # THEN the old one is sealed and its result is the closed default; the absent one is open
    assert old.is_sealed and old.result_of(1) == {"closed": True, "round_id": 1}
    assert (none.is_sealed, none.closed, none.token, none.members) == (False, False, None, None)
    # AND a round that cannot close answers as before
    assert round.not_closed(1, "quorum", arrived=1, needed=2) == {
        "closed": False, "round_id": 1, "arrived": 1, "needed": 2, "cause": "quorum"
    }  # fmt: skip


def _record() -> UpdateRecord:
    return UpdateRecord(
        task_name="digits", client_id="a", update_id="u1", base_version=3, round_id=3,
        s3_key="digits/local/a/00000003-u1.safetensors", sha256="12" * 32, size_bytes=64,
        num_examples=10,
    )  # fmt: skip


def test_sync_acceptance_is_the_verdict_item_written_before() -> None:
    # GIVEN a validated update of round 3 accepted at t = 12.5
    record = _record()
    written = {
        **verdict.accepted(applied_version=4, decided_at=12.5),
        **verdicts.decided_on_record(record, None),
    }
    # THEN the VERDICT item holds what the server wrote before: the decision, the record
    # it was validated as, and the SHA-256 of that record's JSON (computed here by hand)
    fields = {k: v for k, v in record.item().items() if k not in ("task_name", "sk")}
    digest = hashlib.sha256(
        json.dumps(fields, sort_keys=True, default=str, separators=(",", ":")).encode()
    ).hexdigest()
    assert written == {
        "verdict": "accepted",
        "applied_version": 4,
        "decided_at": 12.5,
        "submitted": fields,
        "item_digest": digest,
    }


def test_async_verdicts_keep_their_attributes() -> None:
    # GIVEN an async acceptance that made a version, and a rejection
    accepted = {
        **verdict.accepted(seq=5, staleness=1, weight=0.5, applied_version=4, decided_at=1.0),
        **verdict.produced(version_sha256="ab" * 32),
    }
    rejected = verdict.rejected("stale", "too old", 2.0, attributed=True)
    # THEN they are the attributes written before, in the same order
    assert list(accepted.items()) == [
        ("verdict", "accepted"), ("seq", 5), ("staleness", 1), ("weight", 0.5),
        ("applied_version", 4), ("decided_at", 1.0), ("version_sha256", "ab" * 32),
    ]  # fmt: skip
    assert rejected == {"verdict": "rejected", "reason": "stale", "detail": "too old",
                        "decided_at": 2.0, "attributed": True}  # fmt: skip
    assert "attributed" not in verdict.rejected("schema", "forged", 2.0)


def test_verdict_reads_merged_submissions_of_every_shape() -> None:
    # GIVEN a decided submission (merged), an undecided forged one, and a silo's junk
    decided = Verdict.from_item(
        {"sk": "UPDATE#00000003#a", "client_id": "a", "round_id": 3, "verdict": "accepted",
         "seq": 5, "applied_version": 4, "staleness": 1.0, "decided_at": 3}
    )  # fmt: skip
    forged = Verdict.from_item(
        {"sk": "UPDATE#x", "client_id": "b", "forged_attributes": ["verdict"]}
    )
    junk = Verdict.from_item({"sk": "UPDATE#y", "verdict": "rejected", "seq": "many",
                              "attributed": "yes"})  # fmt: skip
    # THEN each reads without an error, the silo's junk as None, and `settles` as before
    assert (decided.accepted, decided.seq, decided.staleness, decided.decided_at) == (
        True, 5, 1, 3.0
    )  # fmt: skip
    assert decided.settles and verdicts.settles({"verdict": "accepted"})
    assert (forged.decided, forged.forged, forged.client_id) == (False, ("verdict",), "b")
    assert (junk.rejected, junk.seq, junk.attributed, junk.settles) == (True, None, False, False)


def test_ledger_update_entry_round_trips_through_its_json() -> None:
    # GIVEN an accepted async update as the store reads it
    item = {
        "task_name": "digits", "sk": "UPDATE#00000003#u1", "client_id": "a", "update_id": "u1",
        "base_version": 3, "num_examples": 10, "verdict": "accepted", "seq": 5,
        "staleness": 1, "weight": 0.5, "applied_version": 4, "version_sha256": "ab" * 32,
        "decided_at": 7.0,
    }  # fmt: skip
    # WHEN its ledger entry is written as a line and read back
    line = ledger.update_entry(item)
    back = Entry.from_event(json.loads(json.dumps(line)))
    # THEN it keeps the decision and the record as received
    assert line["key"] == "update:UPDATE#00000003#u1" and line["kind"] == "update"
    assert (back.kind, back.sk, back.client_id, back.accepted) == (
        "update", "UPDATE#00000003#u1", "a", True
    )  # fmt: skip
    assert (back.seq, back.staleness, back.weight, back.applied_version) == (5, 1, 0.5, 4)
    assert back.record == {"task_name": "digits", "client_id": "a", "update_id": "u1",
                           "base_version": 3, "num_examples": 10}  # fmt: skip
    # AND a rejected item's silo-written position is not the server's
    stray = ledger.update_entry({**item, "verdict": "rejected", "reason": "stale"})
    assert (stray["seq"], stray["record"]["seq"]) == (None, 5)
    # AND lines that are not mappings are skipped by the readers
    assert [e.kind for e in ledger.entries([line, "junk", 3], "update")] == ["update"]
