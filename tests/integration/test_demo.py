"""`fedasync demo` end to end (small, numpy trainer): the summary says what really happened."""

from __future__ import annotations

import json

import pytest

from fedasync.demo import DemoOptions, run_demo


@pytest.mark.parametrize(
    ("mode", "strategy", "limit"),
    [
        ("sync", None, {"rounds": 3}),
        ("async", "fedasync", {"max_versions": 6}),
        ("async", "fedbuff", {"max_versions": 3}),
    ],
)
async def test_demo_runs_a_whole_task_and_writes_an_honest_summary(tmp_path, mode, strategy, limit):
    # GIVEN 3 silos on a Dirichlet split of digits, the numpy trainer, no artificial delay
    opts = DemoOptions(
        mode=mode,
        strategy=strategy,
        clients=3,
        trainer="numpy",
        train_seconds=0.05,
        out=tmp_path,
        seed=1,
        **limit,
    )
    # WHEN the demo runs on the embedded stack
    summary = await run_demo(opts)
    # THEN the execution succeeded and the summary agrees with itself and the files
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["global_model_sha256"] == summary["global_model_sha256"]
    assert summary["execution"]["status"] == "SUCCEEDED"
    versions = limit.get("rounds", limit.get("max_versions"))
    assert summary["versions"] == versions
    assert [p["version"] for p in summary["accuracy_curve"]] == list(range(versions + 1))
    if mode == "sync":
        assert summary["accepted_updates"] == 3 * versions  # every silo, every round
        assert summary["rejected_updates"] == []
    else:
        # FedAsync: one accepted update per version; FedBuff: K (= clients // 2 = 1) per version
        assert summary["accepted_updates"] == versions
        reasons = {r["reason"] for r in summary["rejected_updates"]}
        assert reasons <= {"stale", "task_finished"}
    # learning happened: the last model beats the random initial one by a wide margin
    assert summary["final_accuracy"] > summary["accuracy_curve"][0]["accuracy"] + 0.3
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(events) >= summary["accepted_updates"]
