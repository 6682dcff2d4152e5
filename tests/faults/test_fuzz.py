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
import itertools
import json
import struct
import uuid
from collections import Counter
from decimal import Decimal, DecimalException
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedasync.aws.records import serialize_item
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import (
    RECORD_FIELDS,
    check_examples,
    check_sender,
    examples_outcome,
    load_payload,
    parse_update_item,
)
from fedasync.core.errors import FedAsyncError, SchemaError
from fedasync.core.fedavg import fedavg
from fedasync.core.messages import UpdateRecord
from fedasync.deployment import Deployment
from fedasync.local.events import LocalLambdaContext
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from server_lambdas import aggregate
from server_lambdas._runtime import runtime
from tests.integration.test_server_sync import store_for

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
    st.decimals(allow_nan=False, allow_infinity=False),  # DynamoDB numbers are finite
    st.binary(max_size=20),
    st.sampled_from(["a", "b", "mallory", TASK, "UPDATE#u1", "1", "nan", "-1", "1e400"]),
)
ddb_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        # DynamoDB refuses empty attribute names (moto stores them and then cannot answer)
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
        # DynamoDB refuses empty strings in sets (moto stores them and then cannot answer)
        st.frozensets(st.text(min_size=1, max_size=5), min_size=1, max_size=3),
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
    st.text(min_size=1, max_size=12),
)


# what a silo may claim: nothing, the bound and just past it, absurdly many, a negative
hostile_examples = st.one_of(
    st.sampled_from(
        [0, 1, CFG.max_num_examples, CFG.max_num_examples + 1, 10**18, 2**63, 10**30, -1]
    ),
    st.integers(min_value=0, max_value=10**20),
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
        action = draw(st.sampled_from(["drop", "set", "add", "examples"]))
        if action == "examples":
            item["num_examples"] = draw(hostile_examples)
        elif action == "drop" and item:
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
        check_examples(record, CFG)  # with the object, in the server's chain

    result = outcome(decide)
    SEEN[f"item:{result}"] += 1
    if result == "ok":
        # Whatever survived parsing really is a well-formed update from a known client
        record = parse_update_item(item)
        assert record.client_id in CLIENTS
        assert record.s3_key.startswith(keys.local_prefix(TASK, record.client_id))
        assert 0 <= record.num_examples <= CFG.max_num_examples


@FUZZ
@given(n=hostile_examples)
def test_a_claimed_number_of_examples_is_within_the_bound_or_refused(n):
    # GIVEN an otherwise valid update claiming n examples
    item = {**good_item(), "num_examples": n}

    def decide() -> None:
        record = parse_update_item(item)
        check_sender(record, CFG)
        check_examples(record, CFG)  # with the object, in the server's chain

    # WHEN it is checked THEN it passes exactly when 0 <= n <= max_num_examples
    result = outcome(decide)
    SEEN[f"item:{result}"] += 1
    if n < 0:
        assert result == "schema"
    elif n > CFG.max_num_examples:
        assert result == "too_many_examples"
    else:
        assert result == "ok"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(counts=st.lists(st.sampled_from([0, 0, 1, 7, CFG.max_num_examples]), min_size=1, max_size=6))
def test_a_round_is_averaged_or_refused_with_a_cause_never_a_crash(counts):
    # GIVEN a round's accepted updates claiming `counts` examples (all zero included)
    records = [
        parse_update_item({**good_item(update_id=f"u{i}"), "num_examples": n})
        for i, n in enumerate(counts)
    ]
    # WHEN the round's close decides whether FedAvg can weigh them
    refused = examples_outcome(CFG, 3, records)
    SEEN[f"round:{'refused' if refused else 'ok'}"] += 1
    # THEN all-zero is refused with a readable cause; otherwise the mean is finite
    if sum(counts) == 0:
        assert refused is not None and "report 0 examples in total" in (refused.cause or "")
    else:
        assert refused is None
        mean = fedavg((MODEL, n) for n in counts)
        assert all(np.isfinite(v).all() for v in mean.values())


# --- mutated model payloads ------------------------------------------------------------------


def _with_header(header: Any, body: bytes, declared: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared is None else declared) + text + body


def _body(blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n :]


HEADER = json.loads(BLOB[8 : 8 + struct.unpack("<Q", BLOB[:8])[0]])


# every dtype the safetensors format defines, with its bytes per element (from the format)
SAFETENSORS_DTYPES = {
    "F16": 2, "F32": 4, "F64": 8, "BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2,
    "U32": 4, "I32": 4, "U64": 8, "I64": 8, "BF16": 2, "C64": 8, "F8_E4M3": 1,
    "F8_E5M2": 1, "F8_E8M0": 1, "F6_E2M3": 1, "F6_E3M2": 1, "F4": 1, "E8M0": 1,
}  # fmt: skip


def _deep(draw: st.DrawFn, header: dict[str, Any]) -> bytes:
    """The header, or its fedasync.order metadata, with a value nested thousands deep."""
    depth = draw(st.sampled_from([4, 5, 100, 1000, 5000, 20000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    deep = opener * depth + ("1" if opener != "[" else "") + closer * depth
    where = draw(st.sampled_from(["entry", "shape", "metadata", "order"]))
    name = sorted(k for k in header if k != "__metadata__")[0]
    if where == "order":
        header["__metadata__"][codec.ORDER_KEY] = deep
        return _with_header(header, _body(BLOB))
    marker = "__DEEP__"
    if where == "entry":
        header[name] = marker
    elif where == "shape":
        header[name]["shape"] = marker
    else:
        header["__metadata__"]["k"] = marker
    text = json.dumps(header).replace(json.dumps(marker), deep).encode()
    return struct.pack("<Q", len(text)) + text + _body(BLOB)


@st.composite
def header_edits(draw: st.DrawFn) -> bytes:
    header = json.loads(json.dumps(HEADER))
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = header[name]
    what = draw(
        st.sampled_from(
            ["dtype", "shape", "offsets", "rename", "metadata", "junk", "deep", "bigint"]
        )
    )
    if what == "dtype":
        entry["dtype"] = draw(st.sampled_from([*SAFETENSORS_DTYPES, "Q", "", "f32"]))
        if draw(st.booleans()):  # offsets that fit the new dtype: only the dtype is wrong
            n = int(np.prod(entry["shape"])) * SAFETENSORS_DTYPES.get(entry["dtype"], 4)
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][0] + n]
    elif what == "deep":
        return _deep(draw, header)
    elif what == "bigint":  # more digits than Python parses (4,300): a bare ValueError once
        digits = "9" * draw(st.sampled_from([4301, 5000, 100_000]))
        spot = draw(st.sampled_from(["shape", "data_offsets"]))
        text = json.dumps(header).replace(json.dumps(entry[spot]), f"[{digits}]", 1).encode()
        return struct.pack("<Q", len(text)) + text + _body(BLOB)
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
    error: SchemaError | None = None
    try:
        codec.decode(data, max_bytes=CFG.max_model_bytes, who="fuzz")
    except SchemaError as exc:  # not KeyError, RecursionError, ValueError, nor another error
        error = exc
    assert error is None or error.message, "every rejection says what happened"
    SEEN[f"decode:{error.reason if error else 'ok'}"] += 1


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_every_dtype_and_any_nesting_depth_is_decoded_or_a_schema_error(data):
    header = json.loads(json.dumps(HEADER))
    # GIVEN the model's header nested deep somewhere, or a tensor of any safetensors dtype
    if data.draw(st.sampled_from(["deep", "dtype"])) == "deep":
        payload = _deep(data.draw, header)
    else:
        dtype = data.draw(st.sampled_from(sorted(SAFETENSORS_DTYPES)))
        size = 12 * SAFETENSORS_DTYPES[dtype]
        header = {"t": {"dtype": dtype, "shape": [4, 3], "data_offsets": [0, size]}}
        payload = _with_header(header, b"\0" * size)
    # WHEN it is decoded THEN it is a SchemaError with its reason, or a model fedasync reads
    try:
        weights = codec.decode(payload, who="fuzz")
    except SchemaError as exc:
        SEEN[f"decode:{exc.reason}"] += 1
        reason = exc.reason
    else:  # only the dtypes fedasync reads, at a depth a safetensors header can have
        assert all(str(a.dtype) in codec.ACCEPTED_DTYPES for a in weights.values())
        SEEN["decode:ok"] += 1
        reason = "ok"
    assert reason in ("ok", "unsupported_dtype", "too_deep")


@pytest.mark.runs_last
def test_pure_layer_saw_enough_inputs():
    """Runs after the properties of this module (runs_last): the count is part of the claim."""
    pure = sum(n for k, n in SEEN.items() if k.split(":")[0] in ("item", "payload", "decode"))
    print("fuzz outcomes:", dict(sorted(SEEN.items())))
    assert pure >= 1000
    # the fuzzers reached the interesting rejections, not only one kind
    reasons = {k.split(":", 1)[1] for k in SEEN}
    assert {"schema", "checksum", "unknown_client", "non_finite", "too_many_examples"} <= reasons
    assert SEEN["round:refused"] > 0 and SEEN["round:ok"] > 0
    assert {"unsupported_dtype", "too_deep"} <= reasons


# --- the real handler on a real stack ----------------------------------------------------

STACK_TASK = "fz-stack"
EVENT_EXAMPLES = 150  # batches of 1-4 records: several hundred records
ITEM_EXAMPLES = 150


@pytest.fixture(scope="module")
async def fuzz_stack(moto_server):
    """An async task at version 0 whose head every fuzzed input must leave alone."""
    spec = Deployment(
        prefix=f"fz{uuid.uuid4().hex[:8]}", clients=tuple(ClientSpec(client_id=c) for c in CLIENTS)
    )
    cfg = TaskConfig.parse(
        {
            "task_name": STACK_TASK,
            "mode": "async",
            "clients": list(CLIENTS),
            "max_model_bytes": 4096,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        await start_task(store, stack.endpoints.state_machine_arn, cfg, MODEL)
        task = await store.get_task(STACK_TASK)
        head = (task["head_version"], task["head_sha256"])
        yield stack, store, head


def _ddb_attr(value: Any) -> Any:
    try:
        return serialize_item({"v": value})["v"]
    except (TypeError, ValueError, DecimalException):
        # what DynamoDB cannot hold (more than 38 digits: Inexact, Rounded), an image
        # cannot carry
        return {"S": repr(value)}


key_values = st.one_of(
    st.text(min_size=1, max_size=60).map(lambda t: {"S": t}),
    st.sampled_from([STACK_TASK, "no-such-task", TASK]).map(lambda t: {"S": t}),
    st.sampled_from(
        [{"N": "1"}, {"N": "nan"}, {"B": "AAEC"}, {"Q": "x"}, {"S": 3}, {}, "plain", None, []]
    ),
)
sort_keys = st.one_of(
    st.text(min_size=1, max_size=60).map(lambda t: {"S": f"UPDATE#{t}"}),
    st.sampled_from(["TASK", "ROUND#00000000", "HEARTBEAT#a", "UPDATE#u1"]).map(lambda t: {"S": t}),
    key_values,
)


@st.composite
def stream_records(draw: st.DrawFn) -> dict[str, Any]:
    """A DynamoDB stream record as Lambda delivers it, with any part of it spoiled."""
    keys_ = {"task_name": draw(key_values), "sk": draw(sort_keys)}
    for name in draw(st.sets(st.sampled_from(["task_name", "sk"]), max_size=1)):
        keys_.pop(name)
    ddb: Any = {
        "Keys": keys_,
        "SequenceNumber": str(draw(st.integers(1, 10**20))),
        "SizeBytes": draw(st.integers(0, 10**6)),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if draw(st.booleans()):
        ddb["NewImage"] = {k: _ddb_attr(v) for k, v in draw(junk_items()).items() if v is not None}
    spoil = draw(st.sampled_from(["none", "none", "keys", "dynamodb", "event"]))
    if spoil == "keys":
        ddb["Keys"] = draw(st.sampled_from(["x", [], None, {"task_name": "raw"}]))
    record: dict[str, Any] = {
        "eventID": draw(st.text(max_size=10)),
        "eventName": draw(st.sampled_from(["INSERT", "INSERT", "MODIFY", "REMOVE"])),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": ddb,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
    }
    if spoil == "dynamodb":
        record["dynamodb"] = draw(st.sampled_from([None, "x", {}]))
    elif spoil == "event":
        record["eventName"] = draw(st.sampled_from(["JUNK", "", None, 3]))
    return record


def _head(stack: EmbeddedStack) -> tuple[Any, Any]:
    task = runtime.run(lambda store: store.get_task(STACK_TASK))
    return task["head_version"], task["head_sha256"]


@settings(
    max_examples=EVENT_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(records=st.lists(stream_records(), min_size=1, max_size=4))
def test_fuzzed_stream_events_never_crash_the_handler_nor_move_the_head(fuzz_stack, records):
    stack, _, head = fuzz_stack
    event = {"Records": records}
    response = aggregate.lambda_handler(event, LocalLambdaContext("aggregate"))
    # a well-formed partial-batch response; junk is skipped or rejected, never retried
    assert set(response) == {"batchItemFailures"}
    assert response["batchItemFailures"] == []
    SEEN["event:records"] += len(records)
    SEEN["event:batches"] += 1
    assert _head(stack) == head


@settings(
    max_examples=ITEM_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(item=junk_items())
def test_fuzzed_update_items_written_to_the_table_go_through_the_pumps(fuzz_stack, item):
    """Write them now; the stream pump runs the handler on each; a runs_last test reads verdicts."""
    n = next(_serial)  # a fresh sort key each: an overwrite is a MODIFY, never decided
    item = {**item, "task_name": STACK_TASK}
    client, update_id = item.get("client_id"), item.get("update_id")
    if (
        isinstance(client, str)
        and isinstance(update_id, str)
        and item.get("sk") == keys.update_sk(client, update_id, None)
    ):
        item["update_id"] = f"{update_id}-{n}"  # still consistent: the deeper checks run
        item["sk"] = keys.update_sk(client, item["update_id"], None)[:200]
    else:
        item["sk"] = f"UPDATE#fz-{n}"
    try:
        # written into the inbox, as a silo writes (the server never writes it), by the
        # test harness: the junk names clients at random
        stored = _inbox_put(fuzz_stack[0], item)
    except (ClientError, TypeError, ValueError, DecimalException):
        SEEN["table:unstorable"] += 1  # DynamoDB refuses it (NaN, empty set...): no stream record
        return
    if stored:
        WRITTEN.add(item["sk"])
        SEEN["table:written"] += 1


WRITTEN: set[str] = set()
_serial = itertools.count()


def _inbox_put(stack: EmbeddedStack, item: dict[str, Any]) -> bool:
    """Put `item` into the inbox table if no item is there (boto3: this test is sync)."""
    creds = stack.aws.credentials
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=stack.endpoints.endpoint_url,
        region_name=stack.endpoints.region,
        aws_access_key_id=creds.access_key_id if creds else "testing",
        aws_secret_access_key=creds.secret_access_key if creds else "testing",
    )
    try:
        ddb.put_item(
            TableName=stack.endpoints.table,
            Item=serialize_item(item),
            ConditionExpression="attribute_not_exists(sk)",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


@pytest.mark.runs_last
async def test_every_written_item_is_decided_and_the_head_never_moved(fuzz_stack, wait_until):
    stack, store, head = fuzz_stack
    assert len(WRITTEN) >= 50

    async def all_decided():
        items = await store.query_prefix(STACK_TASK, "UPDATE#")
        decided = {i["sk"]: i for i in items if i.get("verdict")}
        return decided if set(decided) >= WRITTEN else None

    try:
        # 150 junk items through the stream pump, each read from both tables and decided:
        # minutes on a loaded 2-core machine (a full suite beside it)
        decided = await wait_until(all_decided, timeout_s=240)
    except AssertionError:
        items = await store.query_prefix(STACK_TASK, "UPDATE#")
        undecided = sorted(WRITTEN - {i["sk"] for i in items if i.get("verdict")})
        raise AssertionError(f"{len(undecided)} of {len(WRITTEN)} undecided: {undecided[:5]}") from None
    for sk in WRITTEN:
        assert decided[sk]["verdict"] == "rejected", decided[sk]
        SEEN[f"table:{decided[sk]['reason']}"] += 1
    task = await store.get_task(STACK_TASK)
    assert (task["head_version"], task["head_sha256"], task.get("absorbed", 0)) == (*head, 0)
    assert stack.stream_pump.failed_batches == []


@pytest.mark.runs_last
def test_total_inputs_fuzzed_in_this_module():
    total = sum(
        n
        for k, n in SEEN.items()
        if k.split(":")[0] in ("item", "payload", "decode")
        or k in ("event:records", "table:written", "table:unstorable")
    )
    print("fuzz totals:", total, dict(sorted(SEEN.items())))
    assert total >= 1000 + EVENT_EXAMPLES
