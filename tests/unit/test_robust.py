"""Robust aggregation (median, trimmed mean, Krum, Multi-Krum) and the async outlier
filter: values worked out by hand, then properties (order, bounds, honest Krum, chunks,
memory-mapped input)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core.errors import InvalidWeightsError, SchemaError
from fedasync.core.robust import krum, krum_scores, krum_select, median, outlier, trimmed_mean


def _u(w, b):
    return {"w": np.array(w, np.float32), "b": np.array(b, np.float32)}


# ---------------------------------------------------------------- median


def test_median_of_an_odd_count_is_the_middle_value_per_coordinate():
    # GIVEN three updates with tensors w (2,) and b (a 0-d scalar), w first
    ups = [_u([1, 5], 0), _u([3, -1], 2), _u([2, 4], 10)]
    # WHEN the coordinate-wise median is taken
    out = median(ups)
    # THEN w[0]: sorted [1, 2, 3] -> 2; w[1]: [-1, 4, 5] -> 4; b: [0, 2, 10] -> 2
    assert out["w"].tolist() == [2.0, 4.0]
    assert out["b"].tolist() == 2.0
    assert out["w"].dtype == np.float32 and out["b"].shape == ()
    assert list(out) == ["w", "b"]


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # GIVEN four updates
    ups = [_u([1, 5], 0), _u([3, -1], 2), _u([2, 4], 10), _u([10, 0], 4)]
    # WHEN the median is taken
    out = median(ups)
    # THEN w[0]: [1, 2, 3, 10] -> (2 + 3)/2 = 2.5; w[1]: [-1, 0, 4, 5] -> (0 + 4)/2 = 2;
    # b: [0, 2, 4, 10] -> (2 + 4)/2 = 3
    assert out["w"].tolist() == [2.5, 2.0]
    assert out["b"].tolist() == 3.0


def test_median_of_one_update_is_a_copy_of_it():
    a = _u([1.5, -2.25], 7)
    out = median([a])
    assert out["w"].tolist() == [1.5, -2.25]
    out["w"][0] = 99.0  # THEN the input is not aliased
    assert a["w"][0] == 1.5


def test_median_of_two_float64_values_near_the_limit_does_not_overflow():
    # GIVEN 1.5e308 and 1.7e308: their sum, 3.2e308, overflows float64 (max ~1.8e308)
    big = [{"x": np.array([1.5e308])}, {"x": np.array([1.7e308])}]
    # THEN the median is 1.5e308/2 + 1.7e308/2 = 1.6e308, finite
    out = median(big)["x"][0]
    assert np.isfinite(out)
    np.testing.assert_allclose(out, 1.6e308, rtol=1e-15)


# ---------------------------------------------------------------- trimmed mean

FIVE = [_u([1, 0], 1), _u([2, 0], 2), _u([3, 0], 3), _u([100, 0], 4), _u([-50, 10], 5)]


def test_trimmed_mean_drops_floor_beta_n_from_each_end():
    # GIVEN five updates; w[0] sorted [-50, 1, 2, 3, 100], w[1] [0, 0, 0, 0, 10], b [1..5]
    # WHEN beta = 0.2: floor(0.2 * 5) = 1 dropped at each end
    out = trimmed_mean(FIVE, 0.2)
    # THEN w[0] = (1 + 2 + 3)/3 = 2, w[1] = (0 + 0 + 0)/3 = 0, b = (2 + 3 + 4)/3 = 3
    assert out["w"].tolist() == [2.0, 0.0]
    assert out["b"].tolist() == 3.0
    # beta = 0.39: floor(1.95) = 1, the same trim
    assert trimmed_mean(FIVE, 0.39)["w"].tolist() == [2.0, 0.0]


def test_trimmed_mean_with_beta_0_is_the_plain_mean_and_with_two_trimmed_the_median():
    # beta = 0: w[0] = (1 + 2 + 3 + 100 - 50)/5 = 56/5 = 11.2; w[1] = 10/5 = 2; b = 15/5 = 3
    out = trimmed_mean(FIVE, 0.0)
    assert out["w"].tolist() == [np.float32(11.2), 2.0]
    assert out["b"].tolist() == 3.0
    # beta = 0.4: floor(2.0) = 2 dropped at each end leaves the middle value: 2, 0, 3
    out = trimmed_mean(FIVE, 0.4)
    assert out["w"].tolist() == [2.0, 0.0]
    assert out["b"].tolist() == 3.0


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), True])
def test_trimmed_mean_refuses_a_beta_outside_0_to_one_half(beta):
    with pytest.raises(SchemaError, match="beta"):
        trimmed_mean(FIVE, beta)


# ---------------------------------------------------------------- Krum

# points (a, b) over two tensors, so distances span the whole model:
# p0 = (0, 0), p1 = (1, 0), p2 = (0, 2), p3 = (3, 0), p4 = (10, 10)
KRUM = [
    {"a": np.array([a], np.float32), "b": np.array([b], np.float32)}
    for a, b in [(0, 0), (1, 0), (0, 2), (3, 0), (10, 10)]
]


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances():
    # GIVEN n = 5, f = 1: each score sums the 5 - 1 - 2 = 2 smallest squared distances
    # d(0,1)=1 d(0,2)=4 d(0,3)=9 d(0,4)=100+100=200 d(1,2)=1+4=5 d(1,3)=4 d(1,4)=81+100=181
    # d(2,3)=9+4=13 d(2,4)=100+64=164 d(3,4)=49+100=149
    # p0: {1,4,9,200} -> 5; p1: {1,5,4,181} -> 5; p2: {4,5,13,164} -> 9;
    # p3: {9,4,13,149} -> 13; p4: {200,181,164,149} -> 313
    assert krum_scores(KRUM, 1).tolist() == [5.0, 5.0, 9.0, 13.0, 313.0]


def test_krum_picks_the_best_scored_update_and_breaks_ties_by_the_lowest_index():
    # GIVEN p0 and p1 tie at score 5
    # THEN Krum returns p0 (lowest index), as a copy
    out = krum(KRUM, 1)
    assert out["a"].tolist() == [0.0] and out["b"].tolist() == [0.0]
    assert out["a"] is not KRUM[0]["a"] and out["a"].dtype == np.float32
    assert krum_select(KRUM, 1, 1) == [0]
    # WHEN p1 comes first, it is the lowest index of the tie and is chosen
    swapped = [KRUM[1], KRUM[0], *KRUM[2:]]
    assert krum(swapped, 1)["a"].tolist() == [1.0]


def test_multi_krum_averages_the_m_best_scored_updates():
    # m = 2: p0, p1 -> ((0 + 1)/2, (0 + 0)/2) = (0.5, 0)
    out = krum(KRUM, 1, m=2)
    assert out["a"].tolist() == [0.5] and out["b"].tolist() == [0.0]
    # m = 3: p0, p1, p2 -> (1/3, 2/3)
    assert krum_select(KRUM, 1, 3) == [0, 1, 2]
    out = krum(KRUM, 1, m=3)
    assert out["a"].tolist() == [np.float32(1 / 3)] and out["b"].tolist() == [np.float32(2 / 3)]


def test_krum_requires_n_above_2f_plus_2_and_names_n_and_f():
    with pytest.raises(SchemaError, match=r"n=4 with f=1"):
        krum(KRUM[:4], 1)
    with pytest.raises(SchemaError, match=r"n=5 with f=2"):
        krum_select(KRUM, 2, 1)
    with pytest.raises(SchemaError, match="m must be"):
        krum(KRUM, 1, m=6)
    with pytest.raises(SchemaError, match="f must be"):
        krum(KRUM, -1)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call",
    [median, lambda u: trimmed_mean(u, 0.1), lambda u: krum(u, 0), lambda u: krum_select(u, 0)],
)
def test_empty_or_mismatched_updates_are_a_schema_error(call):
    # GIVEN no update, other names, another shape, another dtype
    good = _u([1, 2], 3)
    with pytest.raises(SchemaError, match="empty"):
        call([])
    with pytest.raises(SchemaError, match=r"update 1 .*missing \['b'\]"):
        call([good, {"w": np.ones(2, np.float32)}, good])
    with pytest.raises(SchemaError, match=r"update 2 has tensor 'w' of shape \(3,\)"):
        call([good, good, _u([1, 2, 3], 3)])
    with pytest.raises(SchemaError, match="dtype float64"):
        call([good, {"w": np.ones(2), "b": np.array(1.0, np.float32)}, good])


def test_a_non_finite_value_is_refused_naming_the_update_and_tensor():
    ups = [_u([1, 2], 3), _u([np.nan, 2], 3), _u([1, 2], 3)]
    with pytest.raises(InvalidWeightsError, match=r"update 1 has NaN/Inf in tensor 'w'"):
        median(ups)


def test_a_chunk_size_below_one_is_refused():
    with pytest.raises(SchemaError, match="chunk"):
        median(FIVE, chunk=0)


# ---------------------------------------------------------------- properties


def _models(min_n=1, max_n=7):
    return st.integers(min_n, max_n).flatmap(
        lambda n: st.lists(
            st.fixed_dictionaries(
                {
                    "k": hnp.arrays(np.float32, (3, 2), elements=st.floats(-1e3, 1e3, width=32)),
                    "s": hnp.arrays(np.float32, (), elements=st.floats(-1e3, 1e3, width=32)),
                }
            ),
            min_size=n,
            max_size=n,
        )
    )


@settings(max_examples=60, deadline=None)
@given(ups=_models(), data=st.data(), beta=st.floats(0.0, 0.49))
def test_median_and_trimmed_mean_do_not_depend_on_the_order_bit_for_bit(ups, data, beta):
    # GIVEN any updates and any permutation of them
    perm = data.draw(st.permutations(range(len(ups))))
    shuffled = [ups[i] for i in perm]
    # THEN the results are identical, bit for bit
    for f in (median, lambda u: trimmed_mean(u, beta)):
        a, b = f(ups), f(shuffled)
        for name in ("k", "s"):
            assert a[name].tobytes() == b[name].tobytes()


@settings(max_examples=60, deadline=None)
@given(ups=_models(), beta=st.floats(0.0, 0.49))
def test_median_and_trimmed_mean_lie_within_each_coordinates_min_and_max(ups, beta):
    for out in (median(ups), trimmed_mean(ups, beta)):
        for name in ("k", "s"):
            stacked = np.stack([u[name] for u in ups])
            assert (out[name] >= stacked.min(axis=0)).all()
            assert (out[name] <= stacked.max(axis=0)).all()


@settings(max_examples=40, deadline=None)
@given(ups=_models(min_n=5), data=st.data())
def test_multi_krum_does_not_depend_on_the_order(ups, data):
    # GIVEN n >= 5 updates, f = 1 and m = 2, with no tie at the cut between the 2nd and
    # the 3rd best score (a tie is broken by the lowest index: by the order, on purpose)
    scores = np.sort(krum_scores(ups, 1))
    assume(scores[2] - scores[1] > 1e-6 * (1 + scores[2]))
    perm = data.draw(st.permutations(range(len(ups))))
    a, b = krum(ups, 1, m=2), krum([ups[i] for i in perm], 1, m=2)
    for name in ("k", "s"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
    attack=st.sampled_from(["scaled", "sign_flip", "far_point"]),
)
def test_krum_returns_an_honest_update_when_attackers_sit_far_away(f, extra, seed, attack):
    # GIVEN n = 2f + 3 + extra updates: n - f honest ones within [-1, 1], and f attackers
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + extra
    honest = [{"w": rng.uniform(-1, 1, size=6).astype(np.float32)} for _ in range(n - f)]
    mean = np.mean([h["w"] for h in honest], axis=0)
    far = {
        "scaled": 1e3 * mean + 50,  # a scaled-up update (shifted: the mean may be ~0)
        "sign_flip": -1e3 * mean - 50,
        "far_point": np.full(6, 1e4),
    }[attack]
    attackers = [{"w": (far + rng.normal(size=6)).astype(np.float32)} for _ in range(f)]
    ups = attackers + honest  # attackers first: the lowest indices
    # WHEN Krum and Multi-Krum (any m up to n - f) choose
    chosen = krum_select(ups, f, n - f)
    # THEN only honest updates are chosen, and Krum returns one of them exactly
    assert all(i >= f for i in chosen)
    out = krum(ups, f)
    assert any(np.array_equal(out["w"], h["w"]) for h in honest)


@settings(max_examples=30, deadline=None)
@given(ups=_models(min_n=5), chunk=st.integers(1, 4), beta=st.floats(0.0, 0.49))
def test_chunking_gives_the_result_of_one_chunk(ups, chunk, beta):
    # GIVEN a tiny chunk (tensors of 6 elements in several chunks) and one huge chunk
    big = 1 << 30
    for f in (median, lambda u, **kw: trimmed_mean(u, beta, **kw)):
        a, b = f(ups, chunk=chunk), f(ups, chunk=big)
        for name in ("k", "s"):
            assert a[name].tobytes() == b[name].tobytes()
    # Krum's distances are summed chunk by chunk, so they agree up to rounding
    np.testing.assert_allclose(
        krum_scores(ups, 1, chunk=chunk), krum_scores(ups, 1, chunk=big), rtol=1e-9, atol=1e-6
    )


def test_a_non_contiguous_tensor_gives_the_result_of_its_contiguous_copy():
    rng = np.random.default_rng(3)
    ups = [{"k": rng.normal(size=(4, 3)).astype(np.float32).T} for _ in range(5)]
    assert not ups[0]["k"].flags.c_contiguous
    dense = [{"k": np.ascontiguousarray(u["k"])} for u in ups]
    assert median(ups, chunk=5)["k"].tobytes() == median(dense)["k"].tobytes()
    assert krum_select(ups, 1, 2, chunk=5) == krum_select(dense, 1, 2)


def test_memory_mapped_updates_are_aggregated_without_being_written(tmp_path):
    # GIVEN six updates written to files and mapped read-only
    rng = np.random.default_rng(7)
    ups = [
        {"k": rng.normal(size=(5, 4)).astype(np.float32), "s": rng.normal(size=3)}
        for _ in range(6)
    ]
    mapped = []
    for i, u in enumerate(ups):
        m = {}
        for name, arr in u.items():
            path = tmp_path / f"{i}-{name}.bin"
            arr.tofile(path)
            m[name] = np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
        mapped.append(m)
    # WHEN each function runs on the maps, in chunks of 3 elements
    # THEN the results equal those on the in-memory arrays, and are plain arrays
    pairs = [
        (median(mapped, chunk=3), median(ups)),
        (trimmed_mean(mapped, 0.2, chunk=3), trimmed_mean(ups, 0.2)),
        (krum(mapped, 1, chunk=3), krum(ups, 1)),
        (krum(mapped, 1, m=3, chunk=3), krum(ups, 1, m=3)),
    ]
    for got, want in pairs:
        for name in ("k", "s"):
            assert type(got[name]) is np.ndarray
            np.testing.assert_array_equal(got[name], want[name])
            assert got[name].dtype == want[name].dtype


# ---------------------------------------------------------------- outlier (async)

RECENT = [1.0, 1.1, 0.9, 1.0, 1.2]


def test_outlier_rejects_a_norm_above_median_plus_k_mad():
    # GIVEN recent norms [1.0, 1.1, 0.9, 1.0, 1.2]: median 1.0, |x - 1| = [0, .1, .1, 0, .2],
    # MAD = median of those = 0.1; with k = 4.5 the limit is 1.0 + 4.5 * 0.1 = 1.45
    # WHEN a norm of 1.5 arrives THEN it is an outlier, with the numbers in the reason
    reason = outlier(1.5, RECENT, k=4.5)
    assert reason is not None and reason.startswith("outlier:")
    assert "1.45" in reason and "median 1" in reason and "last 5 accepted" in reason
    # a norm of 1.4, and any smaller one, passes
    assert outlier(1.4, RECENT, k=4.5) is None
    assert outlier(0.0, RECENT, k=4.5) is None
    # k = 2: limit 1.0 + 2 * 0.1 = 1.2, so 1.25 is out
    assert outlier(1.25, RECENT, k=2.0) is not None


def test_outlier_rejects_nothing_below_the_minimum_history():
    assert outlier(1e9, RECENT[:4], min_history=5) is None
    assert outlier(1e9, RECENT[:4], min_history=4) is not None


def test_outlier_floors_a_zero_mad_at_a_fraction_of_the_median():
    # GIVEN five equal norms of 2: MAD = 0, floor = 0.05 * 2 = 0.1, limit 2 + 4.5 * 0.1 = 2.45
    same = [2.0] * 5
    assert outlier(2.4, same, k=4.5) is None
    assert outlier(2.5, same, k=4.5) is not None
    # rel_floor = 0: the plain rule, limit = 2, so anything above 2 is out
    assert outlier(2.0, same, rel_floor=0.0) is None
    assert outlier(2.001, same, rel_floor=0.0) is not None


def test_outlier_reports_a_non_finite_norm_and_refuses_a_bad_history():
    assert outlier(float("inf"), RECENT) is not None
    with pytest.raises(SchemaError, match="recent_norms"):
        outlier(1.0, [1.0, float("nan")])
    with pytest.raises(SchemaError, match="k > 0"):
        outlier(1.0, RECENT, k=0.0)


def test_krum_distances_keep_their_precision_next_to_a_far_away_attacker():
    # GIVEN eight honest updates 1e-4 apart around 1e3, and an attacker at 1e12 (index 0)
    rng = np.random.default_rng(11)
    honest = [{"w": 1e3 + 1e-4 * rng.normal(size=500)} for _ in range(8)]
    ups = [{"w": np.full(500, 1e12)}, *honest]
    # WHEN scored (f = 1: the 9 - 1 - 2 = 6 nearest)
    scores = krum_scores(ups, 1, chunk=128)
    # THEN the honest scores match the direct sums of squared differences (an |a|^2 + |b|^2
    # - 2ab on the raw values would lose them: 1e24 next to 1e-8)
    for i in range(1, 9):
        direct = sorted(float(np.sum((ups[i]["w"] - ups[j]["w"]) ** 2)) for j in range(9) if j != i)
        assert scores[i] == pytest.approx(sum(direct[:6]), rel=1e-9)


def test_peak_memory_grows_with_n_times_chunk_not_with_n_times_model(tmp_path):
    # GIVEN 8 memory-mapped updates of 1M float32 (4 MiB each: 32 MiB on disk, 64 MiB as
    # float64 if stacked whole) and a chunk of 16384 elements
    import tracemalloc

    n, size, chunk = 8, 1 << 20, 1 << 14
    rng = np.random.default_rng(5)
    mapped = []
    for i in range(n):
        path = tmp_path / f"{i}.bin"
        rng.normal(size=size).astype(np.float32).tofile(path)
        mapped.append({"w": np.memmap(path, dtype=np.float32, mode="r", shape=(size,))})
    # the documented bound: N x chunk x 8 (buffer) + N x chunk (finite mask) + 3 x chunk x 8
    # (one chunk's result) + the output model (4 MiB); Krum adds N x 4096 x 8 and N x N's
    bound = n * chunk * 8 + n * chunk + 3 * chunk * 8 + size * 4 + n * 4096 * 8
    slack = 64 * 1024
    for run in (
        lambda: median(mapped, chunk=chunk),
        lambda: trimmed_mean(mapped, 0.25, chunk=chunk),
        lambda: krum(mapped, 2, m=3, chunk=chunk),
    ):
        # WHEN one runs under tracemalloc (numpy reports its buffers to it; mapped pages
        # are not allocations)
        tracemalloc.start()
        try:
            run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # THEN its peak stays within the bound, ~5.8 MiB (one chunk of the size of the model
        # peaks at 72-84 MiB)
        assert peak <= bound + slack, (peak, bound)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_results_keep_the_input_dtype_and_numpy_integers_are_accepted(dtype):
    # GIVEN updates of one dtype: [1, 2, 4, 8, 16] per coordinate (exact in float16)
    ups = [{"w": np.array([v, -v], dtype)} for v in (1, 2, 4, 8, 16)]
    # THEN median 4; trimmed (beta 0.2: drop 1 and 16) (2 + 4 + 8)/3 = 14/3; Krum with
    # f = np.int64(1): scores over the 2 nearest, d = 2(a - b)^2: 1 -> {2, 18} = 20,
    # 2 -> {2, 8} = 10, 4 -> {8, 18} = 26, 8 -> {32, 72} = 104, 16 -> {128, 288} = 416:
    # Krum = 2
    assert median(ups)["w"].tolist() == [4.0, -4.0] and median(ups)["w"].dtype == dtype
    assert trimmed_mean(ups, 0.2)["w"].tolist() == [dtype(14 / 3), dtype(-14 / 3)]
    assert krum_scores(ups, np.int64(1)).tolist() == [20.0, 10.0, 26.0, 104.0, 416.0]
    out = krum(ups, np.int64(1), m=np.int64(1))
    assert out["w"].tolist() == [2.0, -2.0] and out["w"].dtype == dtype


def test_bfloat16_updates_are_aggregated_in_float64_and_stay_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    ups = [{"w": np.array([v, -v], bf16)} for v in (1, 2, 4, 8, 16)]
    # THEN median 4; trimmed (2 + 4 + 8)/3 = 4.667 -> bfloat16 4.65625 (8 bits of mantissa);
    # Krum 2 (scores as in the test above); Multi-Krum m = 2: (1 + 2)/2 = 1.5
    assert median(ups)["w"].dtype == bf16 and median(ups)["w"].tolist() == [4.0, -4.0]
    assert trimmed_mean(ups, 0.2)["w"].astype(np.float64).tolist() == [4.65625, -4.65625]
    assert krum(ups, 1)["w"].tolist() == [2.0, -2.0]
    assert krum(ups, 1, m=2)["w"].astype(np.float64).tolist() == [1.5, -1.5]


# ---------------------------------------------------------------- Flower as an oracle


@pytest.mark.parametrize("seed", range(6))
def test_the_aggregators_agree_with_flowers(seed):
    # GIVEN random float64 updates of two tensors, a third of them scaled attackers
    agg = pytest.importorskip("flwr.server.strategy.aggregate")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 10))
    f = (n - 3) // 2  # the most Krum tolerates: n > 2f + 2
    ups = [{"k": rng.normal(size=(3, 4)), "b": rng.normal(size=5)} for _ in range(n)]
    for u in ups[: n // 3]:
        u["k"] *= -20.0
    results = [([u["k"], u["b"]], 1) for u in ups]  # Flower: (layers, num_examples)

    def same(ours, theirs):
        for name, layer in zip(("k", "b"), theirs, strict=True):
            np.testing.assert_allclose(ours[name], layer, rtol=1e-12, atol=1e-12)

    # THEN median, trimmed mean, Krum and Multi-Krum give Flower's values
    same(median(ups, chunk=7), agg.aggregate_median(results))
    same(trimmed_mean(ups, 0.2, chunk=7), agg.aggregate_trimmed_avg(results, 0.2))
    same(krum(ups, f, chunk=7), agg.aggregate_krum(results, f, 0))
    same(krum(ups, f, m=3, chunk=7), agg.aggregate_krum(results, f, 3))
