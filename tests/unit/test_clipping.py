"""Whole-model L2 clipping (fedasync.core.clipping): the bound holds for what is summed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core.clipping import clip_update
from fedasync.core.errors import InvalidWeightsError


def _norm_oracle(delta: dict[str, np.ndarray]) -> float:
    # independent of the code under test: one concatenated float64 vector, numpy's norm
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in delta.values()])
    return float(np.linalg.norm(flat))


def test_a_3_4_5_delta_is_scaled_onto_the_bound_across_tensors() -> None:
    # GIVEN a delta whose tensors are (3, 0) and (4,): whole-model norm 5 (no tensor alone is)
    delta = {"a": np.array([3.0, 0.0], dtype=np.float32), "b": np.array([4.0], dtype=np.float32)}
    # WHEN it is clipped to 1
    clipped, before = clip_update(delta, 1.0)
    # THEN every tensor is scaled by 1/5 (hand computed), dtypes kept, the norm before is 5
    assert before == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [0.8], rtol=1e-6)
    assert clipped["a"].dtype == np.float32 and clipped["b"].dtype == np.float32


def test_a_delta_within_the_bound_is_left_as_it_is() -> None:
    # GIVEN a delta of norm 0.5 and a bound of 1
    delta = {"w": np.array([0.3, 0.4], dtype=np.float64)}
    # WHEN clipped
    clipped, before = clip_update(delta, 1.0)
    # THEN nothing changes (the same values), and the norm before is 0.5
    assert before == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped["w"], delta["w"])


def test_the_input_is_not_written_into() -> None:
    # GIVEN a delta far outside the bound
    delta = {"w": np.full(10, 7.0, dtype=np.float32)}
    # WHEN clipped
    clip_update(delta, 0.1)
    # THEN the caller's arrays still hold their values
    np.testing.assert_array_equal(delta["w"], np.full(10, 7.0, dtype=np.float32))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_bound_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    # GIVEN / WHEN a bound of 0, < 0, NaN or Inf / THEN a clear error
    with pytest.raises(ValueError, match="clip bound must be a finite number > 0"):
        clip_update({"w": np.ones(3, dtype=np.float32)}, bad)


def test_a_non_finite_delta_is_refused_not_clipped() -> None:
    # GIVEN a delta with a NaN
    delta = {"w": np.array([1.0, math.nan], dtype=np.float32)}
    # WHEN / THEN it is an invalid update (there is no norm to scale by)
    with pytest.raises(InvalidWeightsError, match="not finite") as caught:
        clip_update(delta, 1.0)
    assert caught.value.reason == "non_finite"


_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])
_BOUNDS = st.floats(min_value=1e-3, max_value=1e3)


@st.composite
def _deltas(draw: st.DrawFn) -> dict[str, np.ndarray]:
    count = draw(st.integers(min_value=1, max_value=4))
    out = {}
    for i in range(count):
        dtype = draw(_DTYPES)
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
        out[f"t{i}"] = draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=16)))
    return out


@settings(max_examples=200, deadline=None)
@given(delta=_deltas(), bound=_BOUNDS)
# found by hypothesis: clipped onto the bound by one float64 norm, 1 ulp above by numpy's
@example(delta={"t0": np.array([103.5]), "t1": np.ones(6)}, bound=0.001)
def test_every_clipped_update_is_within_its_bound_in_its_own_dtype(
    delta: dict[str, np.ndarray], bound: float
) -> None:
    # GIVEN any delta (float16/32/64 tensors, any shapes) and any bound
    # WHEN it is clipped
    clipped, before = clip_update(delta, bound)
    # THEN what would be summed, in its stored dtype, is within the bound (not only on
    # paper: float16 rounding included), the dtypes and shapes are kept, and the norm
    # before is the whole-model norm (numpy's, over the concatenation)
    assert _norm_oracle(clipped) <= bound
    assert {k: (v.dtype, v.shape) for k, v in clipped.items()} == {
        k: (v.dtype, v.shape) for k, v in delta.items()
    }
    assert before == pytest.approx(_norm_oracle(delta), rel=1e-9, abs=1e-12)
    # AND a clipped delta points the same way: scaled, never rotated (up to rounding);
    # one well inside the bound is untouched
    scale = min(1.0, bound / before) if before > 0 else 1.0
    for name, arr in delta.items():
        expected = arr.astype(np.float64) * scale
        tolerance = 2 * float(np.finfo(arr.dtype).eps) * max(bound, 1e-3) + 1e-7
        np.testing.assert_allclose(clipped[name], expected, rtol=1e-2, atol=tolerance)
        if before <= bound * (1 - 1e-6):
            np.testing.assert_array_equal(clipped[name], arr)
