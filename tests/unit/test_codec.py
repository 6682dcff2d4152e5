"""The weights codec: safetensors only, ordered, bit-exact, and hostile input refused."""

import io
import json
import pickle
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save as st_save

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


# --- hostile headers: every malformed payload is a SchemaError with a reason -------------

# bytes per element, from the safetensors format's own table (not from the codec)
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8,
    "I64": 8, "C64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F6_E2M3": 1, "F6_E3M2": 1, "F4": 1, "E8M0": 1,
}  # fmt: skip


def _payload(header: dict | str, body: bytes = b"") -> bytes:
    import json

    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + body


def _decode_both_ways(data: bytes, tmp_path) -> list[SchemaError]:
    """decode() and read_file() on the same bytes; each must raise SchemaError."""
    errors = []
    with pytest.raises(SchemaError) as info:
        codec.decode(data, who="update from client 'x'")
    errors.append(info.value)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with pytest.raises(SchemaError) as info:
        codec.read_file(path, who="update from client 'x'")
    errors.append(info.value)
    return errors


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES))
def test_every_safetensors_dtype_fedasync_does_not_read_is_a_schema_error(dtype, tmp_path):
    # GIVEN a well-formed one-tensor payload of a dtype other than BF16/F16/F32/F64
    size = SAFETENSORS_DTYPES[dtype] * 2
    data = _payload({"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, size]}}, b"\0" * size)
    # WHEN it is decoded (bytes or file) THEN it is refused, naming the tensor and the dtype
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "unsupported_dtype"
        assert f"tensor 't' has dtype '{dtype}'" in error.message
        assert "does not support" in error.message
        assert "client 'x'" in error.message


@pytest.mark.parametrize("dtype", ["", "F128", "float32", "f32", 7, None, ["F32"]])
def test_a_dtype_that_is_not_a_safetensors_dtype_is_a_schema_error(dtype, tmp_path):
    data = _payload({"t": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "unsupported_dtype"
        assert "not a safetensors dtype" in error.message


def test_float16_is_still_read():
    weights = {"h": np.array([1.5, -2.0], np.float16)}
    assert codec.decode(codec.encode(weights))["h"].tobytes() == weights["h"].tobytes()


DEEP = 5000


@pytest.mark.parametrize(
    "header",
    [
        '{"t":' + "[" * DEEP + "]" * DEEP + "}",
        '{"t":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
        '{"__metadata__":{"k":' + "[" * DEEP + "]" * DEEP + "}}",
        '{"t": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}}',  # 4 levels
    ],
    ids=["in-entry", "objects", "in-metadata", "one-too-deep"],
)
def test_a_deeply_nested_header_is_refused_before_parsing(header, tmp_path):
    # GIVEN a header nested deeper than a safetensors header can be (3 levels)
    data = _payload(header, b"\0" * 4)
    # WHEN it is decoded THEN a SchemaError says how deep, never a RecursionError
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "too_deep"
        assert "safetensors header nests" in error.message
        assert "at most 3 expected" in error.message


@pytest.mark.parametrize(
    "order",
    ["[" * DEEP + "]" * DEEP, '[["w"]]', "[" * DEEP, '["w", {"a": 1}]'],
    ids=["deep", "two-levels", "unclosed", "object-inside"],
)
def test_a_deeply_nested_order_metadata_is_refused(order, tmp_path):
    # GIVEN a valid tensor whose fedasync.order metadata nests deeper than a list of names
    header = {
        "__metadata__": {codec.ORDER_KEY: order},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    data = _payload(header, b"\0" * 4)
    # WHEN decoded THEN the order is refused with its depth, never a RecursionError
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "too_deep"
        assert "tensor order metadata nests" in error.message


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}, "needs 4835703278"),
        ({"dtype": "F64", "shape": [2**62], "data_offsets": [0, 2**64]}, "within the 4 data"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "expected a list of ints"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "expected a list of ints"),
        ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "expected a list of ints"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "do not hold that"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "expected [begin, end]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "expected [begin, end]"),
        ({"dtype": "F32", "shape": [1]}, "exactly dtype, shape, data_offsets"),
        ([1, 2], "exactly dtype, shape, data_offsets"),
    ],
    ids=[
        "shape-product-overflows",
        "offset-beyond-u64",
        "negative-dim",
        "bool-dim",
        "float-dim",
        "reversed-offsets",
        "three-offsets",
        "negative-offset",
        "no-offsets",
        "entry-not-an-object",
    ],
)
def test_sizes_and_offsets_that_do_not_add_up_are_schema_errors(entry, fragment, tmp_path):
    data = _payload({"t": entry}, b"\0" * 4)
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "schema"
        assert fragment in error.message
        assert "is not valid safetensors" in error.message


def _depth_oracle(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth_oracle, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth_oracle, value), default=0)
    return 0


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(tree=json_trees)
def test_nesting_depth_agrees_with_the_depth_of_the_parsed_value(tree):
    import json

    from fedasync.core.stheader import nesting_depth

    # strings full of brackets, quotes and escapes must not count
    assert nesting_depth(json.dumps(tree).encode()) == _depth_oracle(tree)
    assert nesting_depth(json.dumps(tree, ensure_ascii=False).encode()) == _depth_oracle(tree)


def test_a_header_of_escaped_quotes_is_refused_in_linear_time(tmp_path):
    # GIVEN a 2 MB header: one unterminated string of escaped quotes (a regex that retried
    # from each quote would take hours on it)
    import time

    header = '{"a":"' + '\\"' * 1_000_000
    start = time.monotonic()
    # WHEN decoded THEN it is refused as not JSON, in well under the time a retry would take
    for error in _decode_both_ways(_payload(header), tmp_path):
        assert error.reason == "schema"
        assert "safetensors header is not valid JSON" in error.message
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("where", ["shape", "offsets", "order"])
def test_an_integer_too_long_for_python_to_parse_is_a_schema_error(where, tmp_path):
    # GIVEN a 5,000-digit integer (Python refuses to parse more than 4,300: ValueError)
    big = "1" * 5000
    entry = {"shape": f"[{big}]", "offsets": "[0, 4]"}
    if where == "offsets":
        entry = {"shape": "[1]", "offsets": f"[0, {big}]"}
    meta = f'"__metadata__": {{"{codec.ORDER_KEY}": "[{big}]"}}, ' if where == "order" else ""
    header = (
        f'{{{meta}"w": {{"dtype": "F32", "shape": {entry["shape"]}, '
        f'"data_offsets": {entry["offsets"]}}}}}'
    )
    # WHEN decoded THEN a SchemaError says the JSON cannot be read, never a bare ValueError
    for error in _decode_both_ways(_payload(header, b"\0" * 4), tmp_path):
        assert type(error) is SchemaError
        assert "is not valid JSON (Exceeds the limit (4300 digits)" in error.message


# --- the encoder writes the safetensors library's bytes; decode may view them ------------

all_float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, ml_dtypes.bfloat16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=st.floats(-1e4, 1e4, width=16),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), all_float_arrays, min_size=1, max_size=6))
def test_encode_writes_exactly_the_safetensors_librarys_bytes(weights):
    # GIVEN any model of the four accepted dtypes, with any tensor names (unicode, quotes,
    # control characters), 0-d and empty tensors included
    # WHEN our encoder writes it THEN the bytes are the safetensors library's own for the
    # same tensors and metadata (the independent oracle), so every stored SHA-256 holds
    ours = codec.encode(weights)
    assert ours == st_save(weights, metadata={codec.ORDER_KEY: json.dumps(list(weights))})


def test_decode_without_copy_views_the_bytes_read_only():
    # GIVEN an encoded model
    blob = codec.encode(MODEL)
    # WHEN it is decoded with copy=False
    views = codec.decode(blob, copy=False)
    # THEN every array is a read-only view on the bytes themselves, with the right values
    for name, arr in views.items():
        assert not arr.flags.writeable
        assert np.shares_memory(arr, np.frombuffer(blob, np.uint8))
        assert arr.tobytes() == MODEL[name].tobytes()
    with pytest.raises(ValueError, match="read-only"):
        views["dense/bias"][0] = 1.0
    # AND the default still hands the caller writable arrays of its own
    owned = codec.decode(blob)
    owned["dense/bias"][0] = 7.0
    assert codec.decode(blob)["dense/bias"][0] == 0.5


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            "tensor 'b' begins at data byte 0; the tensors before it end at 4",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            "tensor 'b' begins at data byte 8; the tensors before it end at 4",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            "its tensors end at data byte 4 of 12",
        ),
    ],
    ids=["overlap", "gap", "unread-tail"],
)
def test_tensors_that_overlap_or_leave_gaps_are_refused(header, fragment, tmp_path):
    # GIVEN entries each valid alone, but overlapping or leaving bytes no tensor owns
    data = _payload(header, b"\0" * 12)
    # WHEN decoded (bytes or file) THEN a SchemaError says where, before any view is made
    for error in _decode_both_ways(data, tmp_path):
        assert error.reason == "schema"
        assert fragment in error.message


def test_bfloat16_round_trips_and_keeps_its_dtype(tmp_path):
    # GIVEN a bf16 model (1.5 and -2.0 and 2**-8 are exact in bfloat16's 8-bit mantissa)
    weights = {"w": np.array([1.5, -2.0, 2.0**-8], dtype=ml_dtypes.bfloat16)}
    blob = codec.encode(weights)
    # THEN the header names BF16 and the data are those values' bf16 bit patterns
    assert b'"dtype":"BF16"' in blob
    assert blob.endswith(bytes.fromhex("c03f00c0803b"))  # little-endian bf16
    # AND decode and read_file give them back as bfloat16
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    for back in (codec.decode(blob), codec.decode(blob, copy=False), codec.read_file(path)):
        assert back["w"].dtype == ml_dtypes.bfloat16
        assert [float(v) for v in back["w"]] == [1.5, -2.0, 2.0**-8]


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_half_precision_weights_are_refused(dtype, value):
    weights = {"w": np.array([1.0, value, 2.0], dtype=dtype)}
    back = codec.decode(codec.encode(weights), copy=False)
    with pytest.raises(InvalidWeightsError) as info:
        codec.check_finite(back, "update from client 'h'")
    assert info.value.reason == "non_finite"
    assert "1 NaN/Inf value(s) in tensor 'w'" in str(info.value)
