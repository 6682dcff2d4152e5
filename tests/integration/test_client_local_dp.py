"""Local DP at the silo, on the embedded stack: the test plays the server (globals in S3,
notices on SNS, with `privacy.mode: local`) and reads what the silo uploaded.

Oracles: the clipped delta is computed here by hand (the trainer adds 1 to every one
of d weights, so the delta has norm √d and clips to C/√d per coordinate); epsilon is
dp-accounting's own, through its public API; the noise's std is judged by a chi-square
interval at probability 1e-6 (stated, not tuned).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from scipy import stats
from structlog.testing import capture_logs

from client.data import Dataset
from client.privacy import PrivacyBudgetExhaustedError
from client.run import run_client
from client.trainers.base import TrainResult
from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.messages import UpdateRecord
from fedasync.core.privacy import PrivacyConfig
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    RUN_TIMEOUT_S,
    Server,
    config,
    server,
    silo,
    stack,
)

D = 60_000  # weights in the model
CLIP, Z, DELTA = 0.5, 1.0, 1e-6


class ShiftTrainer:
    """Training stand-in: adds 1 to every weight, so the delta is known exactly."""

    name = "shift"

    def init_weights(self, seed: int) -> Weights:
        return {"w": np.zeros(D, dtype=np.float32)}

    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        return TrainResult({k: v + 1 for k, v in weights.items()}, len(y), {})

    def evaluate(self, weights: Weights, x: Any, y: Any) -> dict[str, float]:
        return {}


def _privacy(target: float) -> PrivacyConfig:
    return PrivacyConfig(
        mode="local", clip_norm=CLIP, noise_multiplier=Z, target_epsilon=target, delta=DELTA
    )


def _library_epsilon(releases: int) -> float:
    spent = rdp.RdpAccountant()
    spent.compose(dp_accounting.GaussianDpEvent(Z), releases)
    return float(spent.get_epsilon(DELTA))


async def _announce(server: Server, round_id: int, target: float) -> np.ndarray:
    global_w = {"w": np.full(D, 0.25 * round_id, dtype=np.float32)}
    notice = await server.put_global(round_id, global_w)
    await server.publish(notice.model_copy(update={"privacy": _privacy(target)}))
    return global_w["w"]


async def _records(server: Server) -> list[UpdateRecord]:
    items = await server.updates()
    return sorted(
        (UpdateRecord.parse({k: v for k, v in i.items() if k != "sk"}) for i in items),
        key=lambda r: r.base_version,
    )


async def test_a_local_dp_silo_uploads_clipped_noised_models_and_reports_its_epsilon(
    stack, server: Server, silo: Dataset, wait_until, tmp_path: Path
):
    # GIVEN a task with local DP (C = 0.5, z = 1, delta 1e-6, target 100) and round 1
    globals_by_round = {1: await _announce(server, 1, 100.0)}
    cfg = config(stack, work_dir=tmp_path)
    with capture_logs() as logged:
        run = asyncio.create_task(run_client(cfg, trainer=ShiftTrainer(), data=silo))
        # WHEN the silo answers round 1, then round 2
        await wait_until(lambda: _count(server, 1), timeout_s=RUN_TIMEOUT_S)
        globals_by_round[2] = await _announce(server, 2, 100.0)
        await wait_until(lambda: _count(server, 2), timeout_s=RUN_TIMEOUT_S)
        await server.publish(await server.put_global(2, final=True))
        await asyncio.wait_for(run, RUN_TIMEOUT_S)
    records = await _records(server)
    assert [r.round_id for r in records] == [1, 2]
    low = math.sqrt(stats.chi2.ppf(0.5e-6, D - 1) / (D - 1))
    high = math.sqrt(stats.chi2.ppf(1 - 0.5e-6, D - 1) / (D - 1))
    for k, record in enumerate(records, start=1):
        uploaded = codec.decode(await server.get_bytes(record.s3_key, record.sha256))["w"]
        # THEN each upload minus its global is the clipped delta (C/√d per coordinate,
        # by hand) plus noise of std z·C (chi-square interval), the model's dtype kept
        step = uploaded.astype(np.float64) - globals_by_round[record.round_id]
        noise = step - CLIP / math.sqrt(D)
        assert uploaded.dtype == np.float32
        assert low * Z * CLIP <= float(np.std(noise, ddof=1)) <= high * Z * CLIP
        # AND its norm is within the clip bound plus that of the noise
        assert np.linalg.norm(step) <= CLIP + np.linalg.norm(noise) + 1e-3
        # AND the record reports the silo's epsilon after k releases, as dp-accounting has it
        assert record.local_epsilon == pytest.approx(_library_epsilon(k), rel=1e-12)
    # AND the silo kept its count on disk, and logged each release without noise or norm
    [kept] = tmp_path.glob("privacy-*.json")
    assert '"releases": 2' in kept.read_text()
    releases = [e for e in logged if e["event"] == "client.privacy_release"]
    assert [e["releases"] for e in releases] == [1, 2]
    unclipped_norm = math.sqrt(D)  # |delta| before clipping: must not appear anywhere
    text = repr(logged)
    assert f"{unclipped_norm:.4f}"[:7] not in text and "norm_before" not in text
    assert f"{float(noise[0]):.6f}" not in text


async def test_the_silo_stops_before_a_release_past_its_target(
    stack, server: Server, silo: Dataset, wait_until
):
    # GIVEN a target that buys exactly one release at z = 1 (dp-accounting: eps(1) <= 6 < eps(2))
    target = 6.0
    assert _library_epsilon(1) <= target < _library_epsilon(2)
    await _announce(server, 1, target)
    run = asyncio.create_task(run_client(config(stack), trainer=ShiftTrainer(), data=silo))
    await wait_until(lambda: _count(server, 1), timeout_s=RUN_TIMEOUT_S)
    # WHEN round 2 is announced
    await _announce(server, 2, target)
    # THEN the run ends with the budget's reason, and nothing is uploaded for round 2
    with pytest.raises(PrivacyBudgetExhaustedError, match="one more would pass target_epsilon"):
        await asyncio.wait_for(run, RUN_TIMEOUT_S)
    assert [r.round_id for r in await _records(server)] == [1]
    assert len(await server.local_objects()) == 1


async def _count(server: Server, n: int) -> bool:
    return len(await server.updates()) >= n
