"""Screening an update against its base: delta clipping, the async outlier filter and its
window, and the config that turns them on (values worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, InvalidWeightsError
from fedasync.core.screening import clip_to_base, next_window, screen


def _cfg(**fields: object) -> TaskConfig:
    return TaskConfig.parse({"task_name": "t", "mode": "async", "clients": ["a"], **fields})


def _vec(*values: float, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=dtype)}


def test_a_long_delta_is_clipped_onto_the_bound_from_its_base() -> None:
    # GIVEN base (1, 1) and a client model (4, 5): delta (3, 4), norm 5
    base, client = _vec(1.0, 1.0), _vec(4.0, 5.0)
    # WHEN it is clipped to 2.5
    out = clip_to_base(client, base, 2.5)
    # THEN the delta is halved, (1.5, 2): the model is (2.5, 3.0), still float32
    np.testing.assert_array_equal(out["w"], np.array([2.5, 3.0], np.float32))
    assert out["w"].dtype == np.float32


def test_a_float64_delta_clipped_has_the_bound_as_its_norm() -> None:
    # GIVEN a float64 model whose delta (-6, 8, 0) has norm 10 against base (0.5, 0.5, 0.5)
    base, client = _vec(0.5, 0.5, 0.5, dtype=np.float64), _vec(-5.5, 8.5, 0.5, dtype=np.float64)
    # WHEN it is clipped to 1
    out = clip_to_base(client, base, 1.0)
    # THEN the delta is (-0.6, 0.8, 0): norm 1 (a relative 1e-9 inside, clip_update's margin)
    delta = out["w"] - base["w"]
    np.testing.assert_allclose(delta, [-0.6, 0.8, 0.0], rtol=1e-8, atol=1e-12)
    assert 1.0 - 2e-9 <= float(np.linalg.norm(delta)) <= 1.0


def test_a_delta_within_the_bound_is_left_as_it_is() -> None:
    # GIVEN a delta (0.3, 0.4) of norm 0.5
    base, client = _vec(1.0, 1.0), _vec(1.3, 1.4)
    # WHEN it is clipped to 1
    out = clip_to_base(client, base, 1.0)
    # THEN the update is unchanged: the very same array, not a recomputed one
    assert out["w"] is client["w"]


def test_the_window_keeps_the_last_accepted_norms_oldest_first() -> None:
    # GIVEN a filter with a window of 3
    cfg = _cfg(outlier_filter={"window": 3, "min_history": 2})
    # WHEN norms 1, 2, 3, 4 are accepted one after the other
    window: tuple[float, ...] = ()
    for norm in (1.0, 2.0, 3.0, 4.0):
        window = next_window(window, norm, cfg)
    # THEN the window holds the last three, oldest first
    assert window == (2.0, 3.0, 4.0)
    # AND without a filter nothing is kept
    assert next_window((), 1.0, _cfg()) == ()


def _history() -> tuple[float, ...]:
    # median 1.0; |deviations| 0, 0.1, 0.1, 0, 0.2 -> MAD 0.1; limit 1 + 4.5 x 0.1 = 1.45
    return (1.0, 1.1, 0.9, 1.0, 1.2)


def test_an_update_far_above_the_recent_median_is_rejected_as_outlier() -> None:
    # GIVEN the default filter (k 4.5, min_history 5) and 5 accepted norms (limit 1.45)
    cfg = _cfg(outlier_filter={})
    base = _vec(0.0)
    # WHEN an update of delta norm 1.44 comes, then one of 1.46
    passed = screen(_vec(1.44), base, cfg, _history(), "update 'u' from client 'a'")
    with pytest.raises(InvalidWeightsError) as caught:
        screen(_vec(1.46), base, cfg, _history(), "update 'u' from client 'a'")
    # THEN the first passes with its norm (float32 1.44), the second is rejected: reason
    # 'outlier', the client's own word, the detail naming the update, its norm and the limit
    assert passed.norm == pytest.approx(1.44, rel=1e-6)
    assert caught.value.reason == "outlier"
    assert caught.value.attributed is True
    detail = caught.value.message
    assert detail.startswith("update 'u' from client 'a': outlier: delta norm 1.46 > 1.45")
    assert "of the last 5 accepted" in detail


def test_the_filter_waits_for_min_history_and_sees_only_the_window() -> None:
    # GIVEN a filter judging the last 5 norms, after 5 huge ones and then 5 of about 1
    cfg = _cfg(outlier_filter={"window": 5})
    recent = (100.0,) * 5 + _history()
    # WHEN an update of delta norm 50 comes
    # THEN it is rejected: the window is the last 5 (median 1), not all 10 (median 50.5)
    with pytest.raises(InvalidWeightsError, match="of the last 5 accepted"):
        screen(_vec(50.0), _vec(0.0), cfg, recent, "u")
    # AND with only 4 norms accepted so far nothing is rejected, however long
    assert screen(_vec(1e6), _vec(0.0), cfg, _history()[:4], "u").norm == 1e6


def test_the_filter_judges_the_norm_before_clipping() -> None:
    # GIVEN a filter and clipping to 1 (an honest history of norms about 1)
    cfg = _cfg(outlier_filter={}, clip_update_norm=1.0)
    # WHEN a 100x update comes
    # THEN it is rejected, not clipped into an ordinary one
    with pytest.raises(InvalidWeightsError, match="outlier"):
        screen(_vec(100.0), _vec(0.0), cfg, _history(), "u")
    # AND an ordinary one of norm 1.2 passes, clipped to 1 (the window gets 1.2)
    out = screen(_vec(1.2), _vec(0.0), cfg, _history(), "u")
    assert (out.norm, float(out.weights["w"][0])) == (pytest.approx(1.2), 1.0)


def test_without_a_base_the_update_passes_unscreened() -> None:
    # GIVEN filter and clipping, and an update whose base is not at hand (stale: the
    # staleness check rejects it next)
    cfg = _cfg(outlier_filter={}, clip_update_norm=1.0)
    client = _vec(100.0)
    # WHEN it is screened  THEN it is returned as it is, with no norm
    out = screen(client, None, cfg, _history(), "u")
    assert out.weights is client and out.norm is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"mode": "sync", "outlier_filter": {}},
            "outlier_filter: applies to async tasks only; this task is sync",
        ),
        (
            {"mode": "async", "outlier_filter": {"window": 3}},
            "min_history 5 exceeds window 3",
        ),
        ({"mode": "async", "outlier_filter": {"k": 0}}, "outlier_filter.k"),
        ({"mode": "async", "outlier_filter": {"n": 3}}, "outlier_filter.n"),
        ({"mode": "async", "outlier_filter": {"window": 1001}}, "outlier_filter.window"),
        ({"clip_update_norm": 0}, "clip_update_norm"),
        ({"clip_update_norm": float("inf")}, "clip_update_norm"),
        (
            {"clip_update_norm": 2.0, "max_update_norm": 2.0},
            "clip_update_norm 2.0 must be below max_update_norm 2.0",
        ),
    ],
)
def test_bad_screening_config_is_refused_with_its_reason(
    fields: dict[str, object], message: str
) -> None:
    # GIVEN a task config with a bad screening field
    # WHEN it is parsed  THEN a ConfigError names the field and why
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TaskConfig.parse({"task_name": "t", "clients": ["a"], **fields})


def test_clipping_applies_to_sync_tasks_and_the_filter_defaults_are_robust_s() -> None:
    # GIVEN a sync task with clip_update_norm, an async one with an empty outlier_filter
    sync = TaskConfig.parse({"task_name": "t", "clients": ["a"], "clip_update_norm": 3.0})
    filt = _cfg(outlier_filter={}).outlier_filter
    # THEN both are accepted; the filter takes k 4.5, min_history 5, window 20, floor 0.05
    assert sync.clip_update_norm == 3.0
    assert filt is not None
    assert (filt.k, filt.min_history, filt.window, filt.rel_floor) == (4.5, 5, 20, 0.05)


@settings(max_examples=200, deadline=None)
@given(
    base=arrays(np.float32, 6, elements=st.floats(-100, 100, width=32)),
    client=arrays(np.float32, 6, elements=st.floats(-100, 100, width=32)),
    bound=st.floats(1e-3, 50.0),
)
def test_a_clipped_update_lies_within_the_bound_of_its_base_in_the_same_direction(
    base: np.ndarray, client: np.ndarray, bound: float
) -> None:
    # GIVEN any float32 base and client model and a bound
    # WHEN the client is clipped to its base
    out = clip_to_base({"w": client}, {"w": base}, bound)["w"]
    # THEN its delta is within the bound, up to one float32 rounding of each value, and
    # it points the way the original delta did (a non-negative multiple of it)
    before = client.astype(np.float64) - base.astype(np.float64)
    after = out.astype(np.float64) - base.astype(np.float64)
    slack = float(np.finfo(np.float32).eps) * float(np.linalg.norm(np.abs(base) + bound))
    assert float(np.linalg.norm(after)) <= bound + slack
    assert float(np.dot(after, before)) >= -slack * float(np.linalg.norm(before))
    if float(np.linalg.norm(before)) <= bound * (1 - 1e-9):
        np.testing.assert_array_equal(out, client)
