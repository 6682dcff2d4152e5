"""Central DP on sync rounds, on the embedded stack: the noise has the calibrated size,
the budget stops the task with its reason, and nothing stored or logged holds the noise.

Expected values come from hand computation (the clipped deltas) and from dp-accounting's
own public API (the number of releases a budget buys), never from fedasync's code."""

from __future__ import annotations

import asyncio
import json
import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats
from structlog.testing import capture_logs

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger, object_keys
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_sync import (  # noqa: F401 - the stack fixture
    CLIENTS,
    clients_for,
    run_client,
    stack,
    store_for,
    wait_execution,
)

Z, C, DELTA = 0.8, 2.0, 1e-3
SIZE = 4000  # coordinates: enough for a tight estimate of the noise's spread


def _initial() -> dict[str, np.ndarray]:
    return {"w": np.zeros(SIZE, np.float32)}


def rdp_epsilon(releases: int, z: float, delta: float) -> float:
    """epsilon of `releases` Gaussian releases at noise multiplier z, by dp-accounting."""
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def clip_by_hand(delta: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(delta))
    return delta if norm <= bound else delta * (bound / norm)


async def test_releases_are_noised_to_z_c_over_m_and_the_budget_ends_the_task(stack):
    # GIVEN a budget that buys exactly 2 releases by dp-accounting's own count
    target = (rdp_epsilon(2, Z, DELTA) + rdp_epsilon(3, Z, DELTA)) / 2
    cfg = TaskConfig.parse(
        {
            "task_name": "private",
            "clients": list(CLIENTS),
            "rounds": 5,
            "round_timeout_s": 60,
            "privacy": {
                "mode": "central",
                "clip_norm": C,
                "noise_multiplier": Z,
                "target_epsilon": target,
                "delta": DELTA,
            },
        }
    )
    store = store_for(stack)
    with capture_logs() as logs:
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, _initial())
        # WHEN every client answers every round it is asked
        await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 90)
        desc = await wait_execution(stack, arn)
    # THEN the task ended after 2 releases, with the budget as its recorded reason
    assert desc["status"] == "SUCCEEDED"
    task = await store.get_task("private")
    assert task["finished"] == "privacy_budget"
    assert int(task["head_version"]) == 2 and int(task["dp_releases"]) == 2
    # AND each release is x + (sum of clipped deltas + noise) / m, the noise's per-coordinate
    # spread z*C/m: the residual's sample variance lies in its chi-square interval
    x = _initial()["w"].astype(np.float64)
    for version in (1, 2):
        sent = {"w": x.astype(np.float32)}
        deltas = [
            local_model(sent, i, version - 1)["w"].astype(np.float64) - sent["w"] for i in range(3)
        ]
        assert all(np.linalg.norm(d) > C for d in deltas)  # clipping really happens
        exact = sent["w"].astype(np.float64) + sum(clip_by_hand(d, C) for d in deltas) / 3
        got = codec.decode(await store.get_object(keys.global_key("private", version)))["w"]
        residual = got.astype(np.float64) - exact
        sigma = Z * C / 3
        low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], SIZE)
        assert low <= float(np.sum(residual**2)) / sigma**2 <= high
        assert abs(float(residual.mean())) < 6 * sigma / math.sqrt(SIZE)
        x = got.astype(np.float64)
    # AND replay takes each release as the recorded decision and ends at the head
    ledger = await export_ledger(store, "private")
    blobs = {k: await store.get_object(k) for k in object_keys(ledger)}
    result = replay(ledger, blobs.__getitem__)
    assert result.ok, (result.problems, result.mismatches)
    # AND no log line, ledger line or stored server item carries the noise or a norm
    # before clipping: the only DP numbers are the configuration and the counts
    rounds = await store.query_prefix("private", keys.ROUND_PREFIX)
    for item in rounds:
        dp = (item.get("result") or {}).get("dp")
        if dp is not None:
            assert set(dp) == {"clip_norm", "noise_multiplier", "noise_std", "updates", "releases"}
    text = json.dumps(ledger, default=str) + json.dumps(logs, default=str)
    assert "norm_before" not in text and 'noise": [' not in text
    for entry in logs:
        assert not any(isinstance(v, np.ndarray | list) and len(v) > 100 for v in entry.values())


def _cfg(**privacy) -> dict:
    return {
        "task_name": "p",
        "clients": list(CLIENTS),
        "privacy": {
            "mode": "central",
            "clip_norm": 1.0,
            "noise_multiplier": 1.0,
            "target_epsilon": 10.0,
            "delta": 1e-5,
            **privacy,
        },
    }


def test_central_dp_refuses_a_robust_strategy_saying_why():
    with pytest.raises(ConfigError, match="individual updates"):
        TaskConfig.parse({**_cfg(), "strategy": "krum", "strategy_options": {"f": 0}})


async def test_task_start_refuses_a_delta_too_large_and_a_budget_of_no_release(stack):
    store = store_for(stack)
    arn = stack.endpoints.state_machine_arn
    # GIVEN 3 silos: delta must be below 1/3 (a silo is the unit central DP protects)
    with pytest.raises(ConfigError, match="not below 1/N") as exc:
        await start_task(store, arn, TaskConfig.parse(_cfg(delta=0.5)), _initial())
    assert exc.value.reason == "privacy_delta"
    # AND one release at z = 0.3 already costs more than epsilon 1
    with pytest.raises(ConfigError, match="allows no release") as exc:
        await start_task(
            store, arn, TaskConfig.parse(_cfg(noise_multiplier=0.3, target_epsilon=1.0)), _initial()
        )
    assert exc.value.reason == "privacy_budget"
    # THEN neither task was created
    assert await store.get_task("p") is None
