"""One place for the aggregate function's sizes (fedasync.limits), and `task start`
refusing a model that function could not aggregate, with the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fedasync import limits
from fedasync.core.config import TaskConfig
from fedasync.core.errors import PayloadTooLargeError
from fedasync.core.initial import check_initial
from fedasync.limits import AGGREGATE_LIMITS, AGGREGATE_SIZING, EPHEMERAL_MB, AggregateSizing

MiB = 1024 * 1024


def _small_function() -> AggregateSizing:
    # 64 MB of memory, 70 MB of /tmp, 1 MiB chunks, no runtime overhead: by hand,
    # streamed peak 5 MiB; cache (64 - 5) / 8 = 7.375 MiB; whole (64 - 7.375) / 12
    return AggregateSizing(memory_mb=64, ephemeral_mb=70, chunk_bytes=MiB, overhead_bytes=0)


def _cfg(**over: object) -> TaskConfig:
    return TaskConfig.parse({"task_name": "t", "clients": ["a"], "mode": "sync", **over})


def test_the_deployed_sizes_come_from_the_function_limits():
    # GIVEN the deployed aggregate function (3008 MB, 2048 MB of /tmp, 8 MiB chunks, 2 ahead)
    s = AGGREGATE_SIZING
    # THEN its figures are those of its limits, by hand
    assert (s.memory_mb, s.ephemeral_mb) == (AGGREGATE_LIMITS.memory_mb, EPHEMERAL_MB)
    assert s.streamed_peak_bytes == 256 * MiB + 5 * 8 * MiB
    assert s.cache_bytes == (3008 - 296) * MiB // 8
    assert s.max_streamed_model_bytes == (2048 - 64) * MiB
    assert s.max_whole_model_bytes == (3008 * MiB - 256 * MiB - (3008 - 296) * MiB // 8) // 12


def test_small_function_figures_by_hand():
    s = _small_function()
    assert s.streamed_peak_bytes == 5 * MiB
    assert s.cache_bytes == 59 * MiB // 8
    assert s.whole_check_bytes == 59 * MiB // 32
    assert s.max_streamed_model_bytes == 6 * MiB
    assert s.max_whole_model_bytes == (64 * MiB - 59 * MiB // 8) // 12


def test_a_model_streamed_fits_where_the_same_model_held_whole_is_refused(monkeypatch):
    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _small_function())
    # GIVEN a 5 MiB model: under the 6 MiB a streamed round allows, over the ~4.7 MiB of
    # a round that holds models whole
    model = {"w": np.zeros(5 * MiB // 4 - 64, np.float32)}
    # WHEN a sync FedAvg task starts with it THEN it is accepted
    assert check_initial(model, _cfg(), "model") <= 5 * MiB
    # AND WHEN the same task aggregates by median (models held whole) THEN it is refused,
    # naming the model's size, the most the function can aggregate and why
    with pytest.raises(PayloadTooLargeError) as refused:
        check_initial(model, _cfg(strategy="median"), "model")
    most = _small_function().max_whole_model_bytes
    assert refused.value.reason == "too_large_to_aggregate"
    assert f"can aggregate at most {most} bytes holding models whole (12 models in its 64 MB" in (
        refused.value.message
    )
    assert "model is " in refused.value.message


def test_a_max_model_bytes_set_beyond_the_function_is_refused_the_default_is_not(monkeypatch):
    monkeypatch.setattr(limits, "AGGREGATE_SIZING", _small_function())
    model = {"w": np.zeros(16, np.float32)}
    # GIVEN a small model; WHEN the config leaves max_model_bytes at its default (512 MiB)
    # THEN the task starts (every update is checked against the model's spec, its size)
    check_initial(model, _cfg(), "model")
    # WHEN the config sets max_model_bytes beyond the 6 MiB a streamed round allows
    # THEN it is refused with both numbers
    with pytest.raises(
        PayloadTooLargeError, match=r"max_model_bytes is 8388608; .* at most 6291456 bytes streamed"
    ):
        check_initial(model, _cfg(max_model_bytes=8 * MiB), "model")
