"""Evaluation at the silos, on the server side: the example-weighted mean of each eval_*
metric per round (sync) / version (async), in the ledger and the report."""

from __future__ import annotations

import json

import pytest

from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.evals import describe_means, eval_means
from fedasync.core.ledger import build_ledger, dump_ledger, parse_ledger
from fedasync.ops.report import write_report


def update(client, base, n, metrics, verdict="accepted", round_id=None):
    item = {
        "task_name": "t", "client_id": client, "update_id": f"{client}-{base}",
        "base_version": base, "num_examples": n, "metrics": metrics, "verdict": verdict,
        "s3_key": f"t/local/{client}/x.safetensors", "sha256": "0" * 64, "size_bytes": 1,
    }  # fmt: skip
    if round_id is not None:
        item["round_id"] = round_id
    item["sk"] = keys.update_sk(client, item["update_id"], round_id)
    return item


UPDATES = [
    # round/version 0: a (10 examples) and b (30) report accuracy; only a reports loss
    update("a", 0, 10, {"eval_accuracy": 0.5, "eval_loss": 1.2, "train_loss": 0.1}),
    update("b", 0, 30, {"eval_accuracy": 0.9}),
    # rejected: its figures do not count; c claims 0 examples: no weight, not counted
    update("d", 0, 1000, {"eval_accuracy": 0.0}, verdict="rejected"),
    update("c", 0, 0, {"eval_accuracy": 0.0}),
    # version 1: a (10) and b (30) again, b's loss not finite (a silo's junk) is skipped
    update("a", 1, 10, {"eval_accuracy": 0.8, "eval_loss": 0.4}),
    update("b", 1, 30, {"eval_accuracy": 1.0, "eval_loss": float("nan")}),
    # a's second go-ahead on version 1 (its key sorts after a-1): the same model scored
    # again counts once, a's first report stands
    dict(update("a", 1, 10, {"eval_accuracy": 0.0}), sk="UPDATE#a-1-s00000002"),
]


def test_means_are_weighted_by_examples_per_base_version():
    # GIVEN the updates above
    # WHEN the means are taken
    got = eval_means(UPDATES)
    # THEN by hand: v0 accuracy (10*0.5 + 30*0.9)/40 = 32/40 = 0.8, loss a's alone 1.2;
    # v1 accuracy (8 + 30)/40 = 0.95, loss a's alone 0.4; train_loss is not an eval metric
    assert got == [
        {"version": 0, "metrics": {
            "eval_accuracy": {"mean": pytest.approx(0.8), "num_examples": 40, "silos": 2},
            "eval_loss": {"mean": pytest.approx(1.2), "num_examples": 10, "silos": 1},
        }},
        {"version": 1, "metrics": {
            "eval_accuracy": {"mean": pytest.approx(0.95), "num_examples": 40, "silos": 2},
            "eval_loss": {"mean": pytest.approx(0.4), "num_examples": 10, "silos": 1},
        }},
    ]  # fmt: skip
    assert describe_means(got[1], "sync") == "round 1: eval_accuracy 0.95, eval_loss 0.4 (2 silos)"


def task_item(mode: str) -> dict:
    cfg = TaskConfig.parse({"task_name": "t", "mode": mode, "clients": ["a", "b", "c", "d"]})
    return {"task_name": "t", "sk": "TASK", "config": cfg.model_dump_json(),
            "spec": json.dumps([["w", [2], "float32"]]), "initial_sha256": "0" * 64}  # fmt: skip


def test_the_ledger_carries_one_evaluation_event_per_version_and_parses_back():
    # GIVEN a sync task's items with the updates above (rounds = base versions)
    # (a sync silo has one key per round: not the async-only second go-ahead of a)
    items = [task_item("sync"), *(dict(u, round_id=u["base_version"]) for u in UPDATES[:-1])]
    for item in items[1:]:
        item["sk"] = keys.update_sk(item["client_id"], item["update_id"], item["round_id"])
    # WHEN the ledger is built, written and read back
    events = parse_ledger(dump_ledger(build_ledger(items)).splitlines())
    # THEN it has an evaluation event per round with the hand-computed accuracy means
    evaluations = [e for e in events if e["kind"] == "evaluation"]
    assert [(e["key"], e["round_id"]) for e in evaluations] == [
        ("evaluation:0", 0), ("evaluation:1", 1),
    ]  # fmt: skip
    assert evaluations[0]["metrics"]["eval_accuracy"]["mean"] == pytest.approx(0.8)
    assert evaluations[1]["metrics"]["eval_accuracy"]["mean"] == pytest.approx(0.95)


def test_the_report_shows_the_silo_evaluation_table_and_plot(tmp_path):
    # GIVEN an async run's ledger with evaluation events (one hostile metric name)
    ledger = build_ledger([task_item("async"), *UPDATES, update("a", 2, 5, {"eval_<b>x": 1.0})])
    summary = {"task_name": "t", "mode": "async"}
    # WHEN the report is written
    page = write_report(tmp_path, summary, ledger).read_text()
    # THEN it has the section, a row per version with the means (columns by name: the
    # hostile one sorts first), the plot, and no raw HTML
    assert "<h2>Evaluation at the silos</h2>" in page
    assert "<td>0</td><td>—</td><td>0.8000 (2 silos)</td><td>1.2000 (1 silo)</td>" in page
    assert "eval_&lt;b&gt;x" in page and "eval_<b>x" not in page
    assert (tmp_path / "plots" / "silo_evaluation.png").read_bytes()[:4] == b"\x89PNG"
