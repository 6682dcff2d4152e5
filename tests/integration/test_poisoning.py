"""Poisoned silos on the embedded stack: 10 silos of which 2 send sign-flipped updates
scaled by 10 (x_g - 10 (x_local - x_g)). FedAvg takes them and falls; Multi-Krum keeps
its accuracy. Every threshold comes from the clean run of the same strategy measured in
this test, never from a constant tuned to pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedasync.ops.demo import DemoOptions, run_demo

pytestmark = pytest.mark.slow

CLIENTS, ATTACKERS, ROUNDS = 10, 2, 6


async def _accuracy(tmp: Path, strategy: str, options: dict, attackers: int) -> float:
    opts = DemoOptions(
        strategy=strategy,
        clients=CLIENTS,
        rounds=ROUNDS,
        attackers=attackers,
        train_seconds=0.0,
        out=tmp / f"{strategy}-{attackers}",
        task_name=f"poison-{strategy.replace('_', '-')}-{attackers}",
        extra_config={"strategy_options": options} if options else {},
    )
    summary = await run_demo(opts)
    assert summary["execution"]["status"] == "SUCCEEDED"
    assert summary["replay"]["ok"], summary["replay"]
    return float(summary["final_accuracy"])


async def test_two_poisoning_silos_of_ten_break_fedavg_but_not_multi_krum(tmp_path):
    # GIVEN clean runs (no attacker) of FedAvg and of Multi-Krum (f = 2, the mean of the
    # m = 6 best-scored updates: n = 10 > 2f + 2)
    krum = {"f": ATTACKERS, "m": CLIENTS - 2 * ATTACKERS}
    clean_fedavg = await _accuracy(tmp_path, "fedavg", {}, 0)
    clean_krum = await _accuracy(tmp_path, "krum", krum, 0)
    # WHEN the last 2 silos poison every update they send
    poisoned_fedavg = await _accuracy(tmp_path, "fedavg", {}, ATTACKERS)
    poisoned_krum = await _accuracy(tmp_path, "krum", krum, ATTACKERS)
    # THEN FedAvg falls far below its clean run (to chance, in practice)
    assert poisoned_fedavg < clean_fedavg - 0.2, (clean_fedavg, poisoned_fedavg)
    # AND Multi-Krum stays within 2 points of its own clean run
    assert poisoned_krum >= clean_krum - 0.02, (clean_krum, poisoned_krum)
