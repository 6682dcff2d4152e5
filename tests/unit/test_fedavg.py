"""Streaming FedAvg: the weighted mean, by hand, and its properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core import fedavg as fedavg_mod
from fedasync.core.errors import IncompatibleUpdateError, SchemaError
from fedasync.core.fedavg import FedAvgAccumulator, fedavg


def test_weighted_mean_computed_by_hand():
    # GIVEN two clients with 1 and 3 examples
    a = {"w": np.array([0.0, 4.0], np.float32), "b": np.array([1.0], np.float32)}
    b = {"w": np.array([4.0, 0.0], np.float32), "b": np.array([5.0], np.float32)}
    # WHEN averaged: (1*a + 3*b) / 4
    out = fedavg([(a, 1), (b, 3)])
    # THEN w = [(0 + 12)/4, (4 + 0)/4] = [3, 1], b = (1 + 15)/4 = 4
    assert out["w"].tolist() == [3.0, 1.0]
    assert out["b"].tolist() == [4.0]
    assert out["w"].dtype == np.float32
    assert list(out) == ["w", "b"]


def test_one_client_returns_its_model():
    a = {"w": np.array([1.5, -2.25], np.float32)}
    assert fedavg([(a, 7)])["w"].tolist() == [1.5, -2.25]


def test_a_zero_example_update_carries_no_weight():
    a = {"w": np.array([2.0], np.float32)}
    b = {"w": np.array([100.0], np.float32)}
    assert fedavg([(a, 5), (b, 0)])["w"].tolist() == [2.0]


def test_accumulates_in_float64():
    # 1e8 + 1 is not representable in float32; the float64 sum keeps the 1 until the division
    big = {"w": np.array([1e8], np.float32)}
    one = {"w": np.array([3.0], np.float32)}
    out = fedavg([(big, 1), (one, 1)])
    assert out["w"][0] == np.float32((1e8 + 3.0) / 2)


def test_chunked_accumulator_matches_the_direct_formula(monkeypatch):
    monkeypatch.setattr(fedavg_mod, "CHUNK_ELEMENTS", 7)  # several chunks per tensor
    rng = np.random.default_rng(0)
    models = [
        {
            "k": rng.normal(size=(5, 6)).astype(np.float32),
            "s": rng.normal(size=()).astype(np.float32),
        }
        for _ in range(4)
    ]
    ns = [3, 1, 4, 1]
    out = fedavg(zip(models, ns, strict=True))
    for name in ("k", "s"):
        expected = sum(
            n * m[name].astype(np.float64) for m, n in zip(models, ns, strict=True)
        ) / sum(ns)
        assert out[name].shape == models[0][name].shape
        np.testing.assert_array_equal(out[name], expected.astype(np.float32))


def test_empty_round_zero_examples_and_mismatch_are_clear_errors():
    with pytest.raises(SchemaError, match="empty round"):
        FedAvgAccumulator().result()
    with pytest.raises(SchemaError, match="0 examples in total"):
        fedavg([({"w": np.ones(2, np.float32)}, 0)])
    with pytest.raises(IncompatibleUpdateError, match="shape"):
        fedavg([({"w": np.ones(2, np.float32)}, 1), ({"w": np.ones(3, np.float32)}, 1)])


models_st = st.integers(1, 6).flatmap(
    lambda n: st.lists(
        st.tuples(
            hnp.arrays(np.float32, (3, 2), elements=st.floats(-1e3, 1e3, width=32)),
            st.integers(1, 1000),
        ),
        min_size=n,
        max_size=n,
    )
)


@settings(max_examples=100, deadline=None)
@given(models_st, st.randoms(use_true_random=False))
def test_fedavg_is_invariant_to_update_order(updates, rnd):
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    a = fedavg(({"w": w}, n) for w, n in updates)["w"]
    b = fedavg(({"w": w}, n) for w, n in shuffled)["w"]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(models_st, st.integers(1, 50))
def test_equal_weights_give_the_plain_mean(updates, n):
    out = fedavg(({"w": w}, n) for w, _ in updates)["w"]
    expected = np.mean([w.astype(np.float64) for w, _ in updates], axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
