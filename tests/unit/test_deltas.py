"""Half-precision delta uploads (fedasync.core.deltas): the rounding and its error bound
against a float64 reference, overflow refused, and how the server reads a delta back."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from fedasync.core import codec
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import load_payload
from fedasync.core.deltas import (
    DELTA_OF_KEY,
    DeltaOverflowError,
    check_model_fits,
    make_delta,
    to_half,
    write_delta_file,
)
from fedasync.core.errors import ConfigError, IncompatibleUpdateError, InvalidWeightsError
from fedasync.core.messages import GlobalModelNotice, UpdateRecord

HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# unit roundoff (half an ulp at 1) and smallest normal of each half type
ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
SMALLEST_NORMAL = {"float16": 2.0**-14, "bfloat16": 2.0**-126}


def all_finite_values(dtype: str) -> np.ndarray:
    """Every finite value of the half type, ascending, as float64 (from its 65,536 bit
    patterns): the oracle's table, independent of any float64 -> half cast."""
    values = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(HALF[dtype])
    with np.errstate(invalid="ignore"):  # the NaN patterns
        wide = values.astype(np.float32).astype(np.float64)  # half -> float32 is exact
    return np.unique(wide[np.isfinite(wide)])


def nearest_by_table(d: np.ndarray, dtype: str) -> np.ndarray:
    """Round to nearest, ties to the even bit pattern, by lookup in the table."""
    table = all_finite_values(dtype)
    hi = np.clip(np.searchsorted(table, d), 1, len(table) - 1)
    lo = hi - 1
    below, above = table[lo], table[hi]
    pick_above = (above - d) < (d - below)
    tie = (above - d) == (d - below)
    above_bits = above.astype(HALF[dtype]).view(np.uint16)
    pick_above |= tie & (above_bits % 2 == 0)
    return np.where(pick_above, above, below)


def random_deltas(seed: int, n: int = 200_000) -> np.ndarray:
    """Deltas of both signs over 30 binades (1e-4 .. 1e4: fp16's normal range)."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-4, 4, n)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_each_delta_element_is_within_the_documented_relative_bound(dtype):
    # GIVEN random float64 deltas in the half type's normal range
    d = random_deltas(1)
    assert np.abs(d).min() >= SMALLEST_NORMAL[dtype]
    # WHEN they are rounded to the half type
    half = to_half(d, dtype).astype(np.float64)
    # THEN every element is within 2^-11 |d| (fp16) / 2^-8 |d| (bf16) of the float64 value
    assert np.all(np.abs(d - half) <= ROUNDOFF[dtype] * np.abs(d))
    # AND it is the nearest half value, ties to even: the table oracle's choice exactly
    np.testing.assert_array_equal(half, nearest_by_table(d, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_ties_round_to_the_even_value_and_rounding_happens_once(dtype):
    # GIVEN the midpoints between 1 and the next half value, and between it and the next,
    # and a value a hair above the first midpoint (a double rounding via float32 of
    # bf16 would land on the tie and then round it to even, down: wrong)
    ulp = 2.0**-10 if dtype == "float16" else 2.0**-7
    d = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2.0**-40])
    # THEN the ties go to the even neighbour (1 and 1 + 2 ulp); the hair above goes up
    got = to_half(d, dtype).astype(np.float64)
    np.testing.assert_array_equal(got, [1.0, 1 + 2 * ulp, 1 + ulp])


def test_fp16_subnormal_deltas_have_an_absolute_error_of_at_most_2_pow_minus_25():
    # GIVEN deltas below fp16's smallest normal 2^-14, down to 1e-9
    rng = np.random.default_rng(2)
    d = rng.choice([-1.0, 1.0], 50_000) * 10.0 ** rng.uniform(-9, np.log10(2.0**-14), 50_000)
    half = to_half(d, "float16").astype(np.float64)
    # THEN the error is absolute, at most half the subnormal spacing 2^-24
    assert np.all(np.abs(d - half) <= 2.0**-25)
    # AND a delta below 2^-25 becomes 0 (exactly 2^-25 is a tie: to 0, the even value)
    assert np.all(half[np.abs(d) < 2.0**-25] == 0)
    assert to_half(np.array([2.0**-25]), "float16")[0] == 0


def test_a_delta_is_far_more_accurate_than_casting_the_weights():
    # GIVEN float32 weights near 1 moved by a small update (~1e-3)
    rng = np.random.default_rng(3)
    base = rng.normal(1.0, 0.1, 10_000).astype(np.float32)
    local = (base + rng.normal(0, 1e-3, 10_000)).astype(np.float32)
    exact = local.astype(np.float64)
    # WHEN sent as an fp16 delta, or as the fp16 weights themselves
    delta = make_delta({"w": local}, {"w": base}, "float16", "test")["w"]
    via_delta = base.astype(np.float64) + delta.astype(np.float64)
    via_weights = local.astype(np.float16).astype(np.float64)
    # THEN the delta's worst error is within 2^-11 of the largest change (plus nothing)
    err_delta = np.max(np.abs(via_delta - exact))
    assert err_delta <= 2.0**-11 * np.max(np.abs(exact - base))
    # AND over 100x smaller than casting the weights (2^-11 of the weight, ~5e-4)
    assert err_delta * 100 < np.max(np.abs(via_weights - exact))


def test_a_delta_beyond_fp16_range_is_refused_and_the_largest_is_sent():
    # GIVEN changes of 65504 (fp16's largest), 65519 (rounds to it) and 65520 (to inf)
    base = {"w": np.zeros(3, np.float32)}
    # THEN the first two are carried, as 65504
    ok = make_delta({"w": np.array([65504, 65519, -1], np.float32)}, base, "float16", "x")
    assert ok["w"].tolist() == [65504, 65504, -1]
    # AND the third is refused, naming the tensor, the change and the limit
    with pytest.raises(DeltaOverflowError, match=r"'w' changed by 65520.*65504"):
        make_delta({"w": np.array([0, 65520, 0], np.float32)}, base, "float16", "x")


# ---- the server's reading of a delta object --------------------------------------

BASE = {
    "dense/kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
    "dense/bias": np.array([0.25, 0.0], np.float32),
}
SPEC = codec.spec_of(BASE)


def cfg_for(dtype: str | None) -> TaskConfig:
    extra = {"update_encoding": {"dtype": dtype}} if dtype else {}
    return TaskConfig.parse({"task_name": "t", "clients": ["a"], **extra})


def record_for(data: bytes, *, delta_dtype: str | None, base_version: int = 3) -> UpdateRecord:
    return UpdateRecord(
        task_name="t", client_id="a", update_id="a-b00000003", base_version=base_version,
        s3_key="t/local/a/00000003-a-b00000003.safetensors", sha256=codec.sha256_bytes(data),
        size_bytes=len(data), num_examples=10, delta_dtype=delta_dtype,
    )  # fmt: skip


def delta_object(tmp_path: Path, delta: dict, of: int = 3, dtype: str = "float16") -> bytes:
    path = tmp_path / "d.safetensors"
    sha = write_delta_file(delta, path, of, dtype)
    data = path.read_bytes()
    assert codec.sha256_bytes(data) == sha  # the record's SHA-256 is of the bytes sent
    return data


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_delta_object_reads_as_base_plus_delta_in_float32(tmp_path, dtype):
    # GIVEN a delta of exactly representable values against version 3
    delta = {
        "dense/kernel": np.array([[0.5, -0.25], [0.0, 1.0]], HALF[dtype]),
        "dense/bias": np.array([-0.125, 2.0], HALF[dtype]),
    }
    data = delta_object(tmp_path, delta, dtype=dtype)
    # WHEN the server loads it for a task with that encoding, against version 3's model
    got = load_payload(data, record_for(data, delta_dtype=dtype), SPEC, cfg_for(dtype), BASE)
    # THEN it is the local model base + delta, float32, worked out by hand
    assert got["dense/kernel"].dtype == np.float32
    np.testing.assert_array_equal(got["dense/kernel"], [[1.5, -2.25], [0.5, 4.0]])
    np.testing.assert_array_equal(got["dense/bias"], [0.125, 2.0])
    # AND the object is half the size of the full model's, but for the header
    full = codec.encode(BASE)
    header = int.from_bytes(data[:8], "little") + 8
    assert len(data) - header == (len(full) - int.from_bytes(full[:8], "little") - 8) // 2


def _delta(dtype=np.float16):
    return {n: np.full(a.shape, 0.5, dtype) for n, a in BASE.items()}


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: (delta_object(p, _delta(), of=2), "float16", "float16"), "delta of version 2"),
        (lambda p: (delta_object(p, _delta()), None, "float16"), "record says delta_dtype None"),
        (lambda p: (codec.encode(BASE), "float16", "float16"), "its object None"),
        (lambda p: (delta_object(p, _delta()), "float16", None), "the task takes full models"),
        (
            lambda p: (delta_object(p, _delta(ml_dtypes.bfloat16), dtype="bfloat16"), "bfloat16", "float16"),
            "the task takes float16",
        ),
        (
            lambda p: (delta_object(p, _delta(np.float32)), "float16", "float16"),
            "dtype float32; the global model has float16",
        ),
        (
            lambda p: (
                delta_object(p, {**_delta(), "dense/bias": np.zeros(3, np.float16)}),
                "float16",
                "float16",
            ),
            "shape",
        ),
    ],
    ids=["wrong-base", "unmarked-record", "unmarked-object", "task-off", "other-dtype",
         "float32-tensors", "shape"],
)  # fmt: skip
def test_a_delta_that_does_not_fit_its_record_or_task_is_rejected(tmp_path, make, why):
    # GIVEN an update object and record that disagree with each other, the task or the model
    data, record_dtype, task_dtype = make(tmp_path)
    record = record_for(data, delta_dtype=record_dtype)
    # THEN it is rejected as incompatible, saying why, attributed to the client
    with pytest.raises(IncompatibleUpdateError, match=why) as caught:
        load_payload(data, record, SPEC, cfg_for(task_dtype), BASE)
    assert caught.value.attributed


def test_a_delta_with_nan_is_rejected_as_non_finite(tmp_path):
    delta = _delta()
    delta["dense/bias"] = np.array([np.nan, 0], np.float16)
    data = delta_object(tmp_path, delta)
    with pytest.raises(InvalidWeightsError, match="NaN/Inf") as caught:
        load_payload(data, record_for(data, delta_dtype="float16"), SPEC, cfg_for("float16"), BASE)
    assert caught.value.reason == "non_finite"


def test_a_full_model_is_still_accepted_in_a_delta_task():
    # GIVEN a silo built before update_encoding: it uploads its float32 model
    data = codec.encode(BASE)
    got = load_payload(data, record_for(data, delta_dtype=None), SPEC, cfg_for("float16"), BASE)
    # THEN it is read as the model it is
    np.testing.assert_array_equal(got["dense/kernel"], BASE["dense/kernel"])


# ---- the option ----------------------------------------------------------------------


def test_update_encoding_is_refused_with_secure_aggregation():
    with pytest.raises(ConfigError, match="SecAgg quantises each update itself"):
        TaskConfig.parse(
            {"task_name": "t", "clients": ["a", "b", "c"], "secure_aggregation": True,
             "update_encoding": {"dtype": "float16"}}
        )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_update_encoding_is_refused_for_a_model_that_is_not_float32(dtype):
    spec = codec.spec_of({"a": np.zeros(2, np.float32), "b": np.zeros(2, dtype)})
    with pytest.raises(ConfigError, match=r"is for float32 models; tensor 'b' is"):
        check_model_fits(cfg_for("bfloat16"), spec, "initial model")
    check_model_fits(cfg_for(None), spec, "initial model")  # off: any model


def test_default_off_keeps_today_s_notice_and_record_bytes():
    # GIVEN a notice and a record of a task without update_encoding
    notice = GlobalModelNotice(
        task_name="t", mode="sync", version=0, round_id=0, s3_key="k", sha256="0" * 64,
        size_bytes=1,
    )  # fmt: skip
    # THEN neither names the option (a silo or server built before it reads them)
    assert "update_encoding" not in notice.to_json()
    assert "delta_dtype" not in record_for(b"x", delta_dtype=None).item()
    # AND with it, the notice carries it to the silos
    on = notice.model_copy(update={"update_encoding": cfg_for("float16").update_encoding})
    assert GlobalModelNotice.parse(on.to_json()).update_encoding.dtype == "float16"
    assert DELTA_OF_KEY == "fedasync.delta_of"


def test_a_tensor_larger_than_a_chunk_is_rounded_whole_and_checked_in_every_chunk():
    # GIVEN a (2, CHUNK + 3) tensor: its delta spans three chunks
    from fedasync.core.deltas import CHUNK

    rng = np.random.default_rng(4)
    base = {"w": rng.normal(size=(2, CHUNK + 3)).astype(np.float32)}
    local = {"w": (base["w"] + rng.normal(0, 1e-2, base["w"].shape)).astype(np.float32)}
    # THEN the delta is every element's nearest fp16, by table, in the tensor's shape
    delta = make_delta(local, base, "float16", "x")["w"]
    d64 = local["w"].astype(np.float64) - base["w"]
    assert delta.shape == (2, CHUNK + 3)
    np.testing.assert_array_equal(delta.astype(np.float64), nearest_by_table(d64, "float16"))
    # AND an overflow in the last chunk is refused too
    local["w"][1, -1] = 1e6
    with pytest.raises(DeltaOverflowError, match="'w' changed by"):
        make_delta(local, base, "float16", "x")


@pytest.mark.parametrize("value", [{"dtype": "float8"}, {"dtype": "float16", "scale": 2}, "fp16"])
def test_an_update_encoding_that_is_not_float16_or_bfloat16_is_refused(value):
    with pytest.raises(ConfigError, match="update_encoding"):
        TaskConfig.parse({"task_name": "t", "clients": ["a"], "update_encoding": value})
