"""The weights codec: safetensors only, ordered, bit-exact, and hostile input refused."""

import io
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedasync.core import codec
from fedasync.core.errors import (
    IncompatibleUpdateError,
    InvalidWeightsError,
    PayloadTooLargeError,
    SchemaError,
)

MODEL = {
    "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
    "dense/bias": np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32),
}


def test_order_of_tensors_survives_the_round_trip():
    weights = {
        "z": np.zeros(2, np.float32),
        "a": np.ones(1, np.float64),
        "m": np.ones(3, np.float16),
    }
    assert list(codec.decode(codec.encode(weights))) == ["z", "a", "m"]


def test_encoding_is_deterministic_and_hashable():
    a, b = codec.encode(MODEL), codec.encode(dict(MODEL))
    assert a == b
    assert codec.sha256_bytes(a) == codec.sha256_bytes(b)


def test_file_round_trip_and_sha(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = codec.write_file(MODEL, path)
    assert digest == codec.sha256_bytes(path.read_bytes())
    back = codec.read_file(path)
    assert list(back) == list(MODEL)
    for name, arr in MODEL.items():
        assert back[name].tobytes() == arr.tobytes()


float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    elements={"allow_nan": True, "allow_infinity": True},
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text("abcxyz/_.", min_size=1, max_size=12), float_arrays, min_size=1, max_size=5
    )
)
def test_every_accepted_dtype_round_trips_bit_exactly(weights):
    back = codec.decode(codec.encode(weights))
    assert list(back) == list(weights)
    for name, arr in weights.items():
        assert back[name].dtype == arr.dtype
        assert back[name].shape == arr.shape
        assert back[name].tobytes() == arr.tobytes()  # NaN payloads included


def _npy_bytes():
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (pickle.dumps(MODEL), "pickle"),
        (_npy_bytes(), ".npy"),
        (b"PK\x03\x04" + b"\x00" * 40, "zip"),
        (codec.encode(MODEL)[:40], "truncated"),
        (struct.pack("<Q", 10**9) + b'{"a":1}', "claims"),
        (struct.pack("<Q", 2) + b"[]" + b"\x00" * 8, "not safetensors"),
        (b"", "truncated"),
    ],
)
def test_anything_but_safetensors_is_a_schema_error(payload, fragment):
    with pytest.raises(SchemaError) as info:
        codec.decode(payload, who="update from client 'x'")
    assert fragment in str(info.value)
    assert "client 'x'" in str(info.value)


def test_a_header_lying_about_offsets_is_refused():
    good = bytearray(codec.encode({"w": np.zeros(4, np.float32)}))
    lie = bytes(good).replace(b'"data_offsets":[0,16]', b'"data_offsets":[0,64]')
    assert lie != bytes(good)
    with pytest.raises(SchemaError):
        codec.decode(lie)


def test_integer_tensors_are_not_accepted():
    with pytest.raises(IncompatibleUpdateError):
        codec.encode({"steps": np.array([1, 2], dtype=np.int64)})


def test_payload_over_the_limit_is_refused_before_parsing(tmp_path):
    data = codec.encode(MODEL)
    with pytest.raises(PayloadTooLargeError):
        codec.decode(data, max_bytes=len(data) - 1)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with pytest.raises(PayloadTooLargeError):
        codec.read_file(path, max_bytes=10)


def test_shape_mismatch_names_the_tensor_and_both_shapes():
    spec = codec.spec_of(MODEL)
    bad = dict(MODEL, **{"dense/kernel": np.zeros((3, 5), np.float32)})
    with pytest.raises(IncompatibleUpdateError) as info:
        codec.validate(bad, spec, "update from client 'bank-3' for task 'digits'")
    msg = str(info.value)
    assert "'dense/kernel'" in msg
    assert "(3, 5)" in msg
    assert "(3, 4)" in msg
    assert info.value.reason == "shape"


def test_missing_and_extra_tensors_are_listed():
    spec = codec.spec_of(MODEL)
    with pytest.raises(IncompatibleUpdateError) as info:
        codec.validate({"dense/kernel": MODEL["dense/kernel"], "x": MODEL["dense/bias"]}, spec, "u")
    assert "missing ['dense/bias']" in str(info.value)
    assert "unexpected ['x']" in str(info.value)


def test_dtype_mismatch_is_refused():
    spec = codec.spec_of(MODEL)
    bad = {n: a.astype(np.float64) for n, a in MODEL.items()}
    with pytest.raises(IncompatibleUpdateError) as info:
        codec.validate(bad, spec, "u")
    assert info.value.reason == "dtype"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(value):
    bad = {n: a.copy() for n, a in MODEL.items()}
    bad["dense/bias"][1] = value
    with pytest.raises(InvalidWeightsError) as info:
        codec.validate(bad, codec.spec_of(MODEL), "u")
    assert "1 NaN/Inf" in str(info.value)
    assert "'dense/bias'" in str(info.value)


def test_norm_bound_measures_the_delta_from_the_base():
    base = {"w": np.zeros(2, np.float32)}
    moved = {"w": np.array([3.0, 4.0], np.float32)}  # |delta| = 5
    assert codec.check_norm(moved, base, 5.0, "u") == pytest.approx(5.0)
    with pytest.raises(InvalidWeightsError) as info:
        codec.check_norm(moved, base, 4.99, "u")
    assert info.value.reason == "norm"
