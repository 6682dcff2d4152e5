"""Streaming FedAvg: the weighted mean, by hand, and its properties."""

import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core import fedavg as fedavg_mod
from fedasync.core.codec import spec_of
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


# --- half precision: accumulated in float64, written back in the model's dtype ----------


def test_bfloat16_model_is_averaged_in_float64_and_written_back_in_bfloat16():
    # GIVEN a bf16 model (8-bit significand: above 256 the spacing is 2) and three clients
    # of one example each: 256, 1, 1
    updates = [({"w": np.array([v], ml_dtypes.bfloat16)}, 1) for v in (256.0, 1.0, 1.0)]
    # WHEN averaged THEN the float64 sum keeps both ones: (256 + 1 + 1) / 3 = 86, exact in
    # bf16 (a bf16 sum would round 257 back to 256 twice and give 256/3 -> 85.5)
    out = fedavg(updates)["w"]
    assert out.dtype == ml_dtypes.bfloat16
    assert float(out[0]) == 86.0


def test_float16_model_is_averaged_in_float64_and_written_back_in_float16():
    # GIVEN a fp16 model (11-bit significand: above 2048 the spacing is 2): 2048, 1, 1
    updates = [({"w": np.array([v], np.float16)}, 1) for v in (2048.0, 1.0, 1.0)]
    # WHEN averaged THEN 2050 / 3 = 683.33.. rounds to 683.5 (spacing 0.5 in [512, 1024));
    # a fp16 sum would have lost both ones: 2048 / 3 -> 682.5
    out = fedavg(updates)["w"]
    assert out.dtype == np.float16
    assert float(out[0]) == 683.5


def test_half_precision_weights_by_examples():
    # GIVEN bf16 [1, 2] with 1 example and [3, 0.5] with 3: (1*1 + 3*3)/4 = 2.5,
    # (1*2 + 3*0.5)/4 = 0.875, both exact in bf16 and fp16
    for dtype in (ml_dtypes.bfloat16, np.float16):
        a = {"w": np.array([1.0, 2.0], dtype)}
        b = {"w": np.array([3.0, 0.5], dtype)}
        out = fedavg([(a, 1), (b, 3)])["w"]
        assert out.dtype == dtype
        assert [float(v) for v in out] == [2.5, 0.875]


# --- the fold's blocks and the streamed path give the same bytes as the formula ---------


def _models(count: int, dtype=np.float32):
    rng = np.random.default_rng(7)
    return [
        {
            "k": rng.normal(size=(5, 6)).astype(dtype),
            "e": np.zeros((0, 3), dtype),
            "s": rng.normal(size=()).astype(dtype),
        }
        for _ in range(count)
    ], [3, 1, 4, 1, 5][:count]


def _formula(models, ns, name, dtype):
    total = sum(n * m[name].astype(np.float64) for m, n in zip(models, ns, strict=True))
    return (total / sum(ns)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_small_blocks_and_chunks_give_the_formulas_bytes(monkeypatch, dtype):
    # GIVEN accumulator chunks of 7 and fold blocks of 3 elements (tensors span several)
    monkeypatch.setattr(fedavg_mod, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(fedavg_mod, "BLOCK_ELEMENTS", 3)
    models, ns = _models(4, dtype)
    # WHEN averaged THEN each tensor is sum(n_i * float64(x_i)) / sum(n_i), cast back
    out = fedavg(zip(models, ns, strict=True))
    for name in ("k", "e", "s"):
        assert out[name].dtype == dtype
        assert out[name].tobytes() == _formula(models, ns, name, dtype).tobytes()


def _streamed(models, ns, spans):
    acc = FedAvgAccumulator(spec_of(models[0]))
    for m, n in zip(models, ns, strict=True):
        for name, start, stop in spans:
            acc.add_chunk(name, start, m[name].reshape(-1)[start:stop], n)
    return acc.result()


def test_add_chunk_gives_the_same_bytes_as_add(monkeypatch):
    # GIVEN accumulator chunks of 7 elements and streamed slices that straddle them,
    # out of order within each update: k = 30 elements as [12, 30), [0, 5), [5, 12)
    monkeypatch.setattr(fedavg_mod, "CHUNK_ELEMENTS", 7)
    models, ns = _models(3)
    spans = [("k", 12, 30), ("s", 0, 1), ("k", 0, 5), ("e", 0, 0), ("k", 5, 12)]
    # WHEN the same updates are folded whole and streamed
    whole = fedavg(zip(models, ns, strict=True))
    streamed = _streamed(models, ns, spans)
    # THEN the bytes agree and match the formula
    for name in ("k", "e", "s"):
        assert streamed[name].tobytes() == whole[name].tobytes()
        assert streamed[name].tobytes() == _formula(models, ns, name, np.float32).tobytes()


def test_a_streamed_update_counts_once_when_it_covers_the_model():
    models, _ = _models(1)
    acc = FedAvgAccumulator(spec_of(models[0]))
    acc.add_chunk("k", 0, models[0]["k"].reshape(-1)[:10], 3)
    # GIVEN a third of tensor k folded THEN nothing is counted and no result can be taken
    assert (acc.count, acc.total_examples) == (0, 0)
    with pytest.raises(SchemaError, match="10 of 31 elements folded"):
        acc.result()
    # WHEN the rest arrives THEN the update counts once, with its 3 examples
    acc.add_chunk("k", 10, models[0]["k"].reshape(-1)[10:], 3)
    acc.add_chunk("s", 0, models[0]["s"].reshape(-1), 3)
    assert (acc.count, acc.total_examples) == (1, 3)


@pytest.mark.parametrize(
    ("name", "start", "stop", "n", "error", "fragment"),
    [
        ("k", 4, 8, 3, SchemaError, "chunk [4, 8) of tensor 'k' overlaps one already folded"),
        ("k", 28, 31, 3, IncompatibleUpdateError, "outside its 30 elements"),
        ("k", 10, 12, 5, SchemaError, "reports 5 examples; this update's first chunk reported 3"),
        ("x", 0, 1, 3, IncompatibleUpdateError, "tensor 'x' is not in the global model"),
    ],
    ids=["overlap", "out-of-bounds", "examples-change", "unknown-tensor"],
)
def test_a_bad_chunk_is_refused_before_it_touches_the_sum(name, start, stop, n, error, fragment):
    # GIVEN elements [0, 6) of k folded from an update of 3 examples
    models, _ = _models(1)
    flat = models[0]["k"].reshape(-1)
    acc = FedAvgAccumulator(spec_of(models[0]))
    acc.add_chunk("k", 0, flat[:6], 3)
    # WHEN a chunk overlaps, overruns, changes its count or names no tensor THEN refused
    values = np.ones(stop - start, np.float32)
    with pytest.raises(error, match=re.escape(fragment)):
        acc.add_chunk(name, start, values, n)
    # AND the update can still be completed, with the same bytes as a whole add
    acc.add_chunk("k", 6, flat[6:], 3)
    acc.add_chunk("s", 0, models[0]["s"].reshape(-1), 3)
    assert acc.result()["k"].tobytes() == models[0]["k"].tobytes()


def test_a_chunk_of_the_wrong_dtype_is_refused():
    models, _ = _models(1)
    acc = FedAvgAccumulator(spec_of(models[0]))
    with pytest.raises(IncompatibleUpdateError, match="dtype float64"):
        acc.add_chunk("k", 0, np.ones(3), 1)
