"""Bad input on the embedded stack: each gets a clear error, a recorded rejection, and
leaves the global model unchanged (or, mixed with good updates, the result is exactly
what the good ones alone give).

Two stacks per module, each shared by its cases (in any order; the one that finishes the
task runs last):
- async: one FedAsync task at version 1; every case sends one bad update and checks the
  verdict, the reason, the detail, and that the head (version, SHA-256, bytes) did not move;
- sync: one FedAvg round per case, where client 'a' is bad and 'b', 'c' are good; the
  new version must equal FedAvg of b and c computed here by hand.
"""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from fedasync.aws.records import serialize_item
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment
from fedasync.local.events import LocalLambdaContext, sqs_record
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.events import export_ledger
from fedasync.policy.definitions import CLIENT_ITEM_ATTRIBUTES
from fedasync.resources import ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView
from fedasync.server.tasks import start_task
from tests.call_audit import expect_refused
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)

CLIENTS = ("a", "b", "c")
NORM_BOUND = 20.0
MAX_BYTES = 16384  # room for a 5,000-deep header


@dataclass
class Env:
    stack: EmbeddedStack
    store: ServerStore
    task: str
    arn: str
    clients: dict[str, ScriptedClient]
    notes: dict[str, Any] = field(default_factory=dict)


async def wait_verdict(store: ServerStore, task: str, sk: str, timeout_s: float = 20) -> dict:
    for _ in range(int(timeout_s / 0.05)):
        item = await store.get_item(task, sk)
        if item and item.get("verdict"):
            return item
        await asyncio.sleep(0.05)
    raise AssertionError(f"no verdict on {task}/{sk} within {timeout_s} s")


async def head_of(store: ServerStore, task: str) -> tuple[int, str, bytes]:
    item = await store.get_task(task)
    version = int(item["head_version"])
    return version, item["head_sha256"], await store.get_object(keys.global_key(task, version))


async def notice_for(store: ServerStore, task: str) -> GlobalModelNotice:
    view = TaskView.from_item(task, await store.get_task(task))
    return view.notice(view.head_version)


def assert_rejected(item: dict, reason: str, *details: str) -> None:
    assert item["verdict"] == "rejected", item
    assert item["reason"] == reason, item["detail"]
    for text in details:
        assert text in item["detail"], (text, item["detail"])


# --- the bad payloads, as functions of the current global model ------------------------


def _pickle(x: dict) -> dict:
    return {"blob": pickle.dumps(x)}  # a hostile client's choice; the server never loads it


def _npy(x: dict) -> dict:
    buf = io.BytesIO()
    np.save(buf, x["dense/kernel"])
    return {"blob": buf.getvalue()}


def _truncated(x: dict) -> dict:
    blob = codec.encode(x)
    return {"blob": blob[: len(blob) - 20]}


def _lying_header(x: dict) -> dict:
    blob = codec.encode(x)
    return {"blob": struct.pack("<Q", 2**40) + blob[8:]}


def _renamed(x: dict) -> dict:
    return {"weights": {"dense/kernel": x["dense/kernel"], "dense/gamma": x["dense/bias"]}}


def _reshaped(x: dict) -> dict:
    return {
        "weights": {"dense/kernel": x["dense/kernel"].reshape(3, 4), "dense/bias": x["dense/bias"]}
    }


def _retyped(x: dict) -> dict:
    return {"weights": {k: v.astype(np.float64) for k, v in x.items()}}


def _poisoned(value: float):
    def build(x: dict) -> dict:
        bias = x["dense/bias"].copy()
        bias[1] = value
        return {"weights": {"dense/kernel": x["dense/kernel"], "dense/bias": bias}}

    return build


def _too_far(x: dict) -> dict:
    return {"weights": {k: (v + 100).astype(v.dtype) for k, v in x.items()}}


def _too_big(x: dict) -> dict:
    return {"weights": {**x, "extra": np.zeros(MAX_BYTES // 4, np.float32)}}


def _raw(header: str, body: bytes = b"") -> dict:
    text = header.encode()
    return {"blob": struct.pack("<Q", len(text)) + text + body}


def _dtype(name: str, itemsize: int):
    """The model's tensors, declared in another safetensors dtype (zero bytes)."""

    def build(x: dict) -> dict:
        header, start = {}, 0
        for key, arr in x.items():
            header[key] = {"dtype": name, "shape": list(arr.shape),
                           "data_offsets": [start, start + arr.size * itemsize]}  # fmt: skip
            start += arr.size * itemsize
        return _raw(json.dumps(header), b"\0" * start)

    return build


DEEP = 5000


def _deep_header(x: dict) -> dict:
    return _raw('{"dense/kernel":' + "[" * DEEP + "]" * DEEP + "}")


def _deep_order(x: dict) -> dict:
    blob = codec.encode(x)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"][codec.ORDER_KEY] = "[" * DEEP + "]" * DEEP
    return _raw(json.dumps(header), blob[8 + n :])


def _huge_integer(x: dict) -> dict:
    entry = '{"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}'
    return _raw('{"dense/kernel": ' + entry + "}", b"\0" * 4)


def _overflowing_shape(x: dict) -> dict:
    entry = {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}
    return _raw(json.dumps({"dense/kernel": entry}), b"\0" * 4)


def _wrong_sha(x: dict) -> dict:
    return {"weights": local_model(x, 0, 1), "sha256": "0" * 64}


def _spoof_other(x: dict) -> dict:
    return {"s3_key": keys.local_key("{task}", "b", 1, "stolen")}


def _spoof_global(x: dict) -> dict:
    return {"s3_key": keys.global_key("{task}", 1)}  # the global model itself: its SHA matches


def _spoof_dots(x: dict) -> dict:
    return {"s3_key": "{task}/local/a/../b/00000001-x.safetensors"}


def _missing_object(x: dict) -> dict:
    return {"s3_key": keys.local_key("{task}", "a", 1, "never-uploaded")}


# id -> (build(x) -> submit overrides, reason, detail fragments)
PAYLOADS: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    "pickle": (_pickle, "schema", ("pickle", "expected safetensors")),
    "npy": (_npy, "schema", (".npy",)),
    "truncated-safetensors": (_truncated, "schema", ("not valid safetensors",)),
    "header-lies-about-size": (_lying_header, "schema", ("claims 1099511627776 bytes",)),
    "wrong-tensor-names": (_renamed, "names", ("missing ['dense/bias']", "'dense/gamma'")),
    "wrong-shape": (_reshaped, "shape", ("shape (3, 4)", "the global model has (4, 3)")),
    "wrong-dtype": (_retyped, "dtype", ("dtype float64", "the global model has float32")),
    "nan": (_poisoned(np.nan), "non_finite", ("1 NaN/Inf", "'dense/bias'")),
    "inf": (_poisoned(-np.inf), "non_finite", ("1 NaN/Inf", "'dense/bias'")),
    "norm-above-bound": (_too_far, "norm", ("L2 norm", f"at most {NORM_BOUND:g}")),
    "above-size-limit": (_too_big, "too_large", (f"the limit is {MAX_BYTES}",)),
    # bf16 is read (issue 18), but a bf16 update to a float32 model is the wrong dtype
    "bf16-on-float32": (_dtype("BF16", 2), "dtype", ("dtype bfloat16", "has float32")),
    "f8-e4m3": (_dtype("F8_E4M3", 1), "unsupported_dtype", ("dtype 'F8_E4M3'",)),
    "f8-e5m2": (_dtype("F8_E5M2", 1), "unsupported_dtype", ("dtype 'F8_E5M2'",)),
    "int64": (_dtype("I64", 8), "unsupported_dtype", ("dtype 'I64'",)),
    "deep-header": (_deep_header, "too_deep", (f"header nests {DEEP + 1} levels deep",)),
    "deep-order-metadata": (_deep_order, "too_deep", (f"order metadata nests {DEEP} levels",)),
    "overflowing-shape": (_overflowing_shape, "schema", ("needs 4835703278458516698824704",)),
    "5000-digit-integer": (_huge_integer, "schema", ("Exceeds the limit (4300 digits)",)),
    "sha256-mismatch": (_wrong_sha, "checksum", ("SHA-256", "the record says " + "0" * 64)),
    "key-in-other-client-prefix": (_spoof_other, "spoofed_key", ("expected a key under",)),
    "key-is-the-global-model": (_spoof_global, "spoofed_key", ("expected a key under",)),
    "key-escapes-with-dots": (_spoof_dots, "spoofed_key", ("expected a key under",)),
    "object-missing": (_missing_object, "missing_object", ("missing from the model bucket",)),
}


async def submit_case(client: ScriptedClient, notice: GlobalModelNotice, build, update_id=None):
    x = await client.download(notice.s3_key)
    over = build(x)
    if set(over) - {"weights", "blob"} - set(CLIENT_ITEM_ATTRIBUTES):
        # a forged attribute: the deployed role refuses the put (see put_raw)
        expect_refused(f"client:{client.client_id}", "dynamodb:PutItem", f"*:table/{client.table}")
    if "s3_key" in over:
        over["s3_key"] = over["s3_key"].replace("{task}", notice.task_name)
        over.setdefault("weights", local_model(x, client.index, notice.version))
    return await client.submit(notice, update_id=update_id, **over)


# --- async: one task at version 1, every case against it -------------------------------


async def version_chain(store: ServerStore, task: str) -> dict[int, str]:
    """The ledger's chain of global models: version -> SHA-256."""
    return {e["version"]: e["sha256"] for e in await export_ledger(store, task)
            if e["kind"] == "version"}  # fmt: skip


async def assert_head_unchanged(env: Env) -> None:
    assert await head_of(env.store, env.task) == env.notes["head"]
    task = await env.store.get_task(env.task)
    assert (task["absorbed"], task.get("finished")) == (1, None)
    assert await version_chain(env.store, env.task) == env.notes["chain"]


def _drop(field_name: str):
    return lambda item: {k: v for k, v in item.items() if k != field_name}


def _set(**values: Any):
    return lambda item: {**item, **values}


# id -> (mutate(valid item) -> item, reason, detail fragments)
RECORDS: dict[str, tuple[Any, str, tuple[str, ...]]] = {
    "missing-sha256": (_drop("sha256"), "schema", ("sha256: Field required",)),
    "missing-base-version": (_drop("base_version"), "schema", ("base_version: Field required",)),
    "schema-version-2": (_set(schema_version=2), "schema", ("schema_version 2 is not supported",)),
    "schema-version-as-text": (_set(schema_version="1"), "schema", ("schema_version",)),
    "schema-version-as-bool": (_set(schema_version=True), "schema", ("schema_version",)),
    "num-examples-not-a-number": (_set(num_examples="many"), "schema", ("num_examples",)),
    "negative-base-version": (_set(base_version=-1), "schema", ("base_version",)),
    "metrics-not-numbers": (_set(metrics={"acc": "high"}), "schema", ("metrics.acc",)),
    "unknown-field": (_set(owner="root"), "schema", ("owner: Extra inputs are not permitted",)),
    "forged-server-attribute": (_set(seq=7), "schema", ("server-owned attribute(s) ['seq']",)),
    "sort-key-of-another-update": (_set(update_id="other"), "schema", ("expected 'UPDATE#other'",)),
    "round-id-on-async": (
        _set(round_id=1, sk=keys.update_sk("a", "", 1)),
        "schema",
        ("task is async; round_id must be absent",),
    ),
    "stale-beyond-max-staleness": (_set(base_version=0), "stale", ("stale: 1 > 0",)),
}


async def put_raw(client: ScriptedClient, item: dict[str, Any]) -> None:
    if set(item) - set(CLIENT_ITEM_ATTRIBUTES):
        # the deployed role refuses this put (dynamodb:Attributes); moto cannot tell, so
        # the server's own validation is tested here, and the call audit holds IAM to it
        table = f"*:table/{client.table}"
        expect_refused(f"client:{client.client_id}", "dynamodb:PutItem", table)
    ddb = await client.aws.dynamodb()
    await ddb.put_item(TableName=client.table, Item=serialize_item(item))


async def valid_item(env: Env, client_id: str, update_id: str) -> dict[str, Any]:
    """A correct update item for the head, its object uploaded: the cases spoil one thing."""
    client, notice = env.clients[client_id], await notice_for(env.store, env.task)
    blob = codec.encode(local_model(env.notes["x1"], client.index, notice.version))
    key = keys.local_key(env.task, client_id, notice.version, update_id)
    await (await client.aws.s3()).put_object(Bucket=client.bucket, Key=key, Body=blob)
    return {
        "task_name": env.task,
        "sk": keys.update_sk(client_id, update_id, None),
        "client_id": client_id,
        "update_id": update_id,
        "base_version": notice.version,
        "s3_key": key,
        "sha256": codec.sha256_bytes(blob),
        "size_bytes": len(blob),
        "num_examples": 5,
        "metrics": {},
    }


# --- sync: one round per case, 'a' bad and 'b', 'c' good --------------------------------


def _forged_verdict(x: dict) -> dict:
    # a poisoned model whose item claims the server already accepted it
    return {**_poisoned(np.nan)(x), "verdict": "accepted", "applied_version": 1}


SYNC_ONLY = {
    "forged-verdict": (_forged_verdict, "schema", ("server-owned attribute(s)", "'verdict'")),
}
SYNC_CASES = (
    "nan",
    "wrong-shape",
    "sha256-mismatch",
    "key-in-other-client-prefix",
    "pickle",
    "forged-verdict",
    "bf16-on-float32",
    "deep-order-metadata",
    "object-missing",
)
ROUND_TIMEOUT_S = 6


async def round_notice(client: ScriptedClient, round_id: int) -> GlobalModelNotice:
    for _ in range(60):
        notice = await client.poll()
        if notice is not None and notice.round_id == round_id:
            return notice
    raise AssertionError(f"client {client.client_id!r} saw no notice for round {round_id}")


async def wait_head(store: ServerStore, task: str, version: int, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if (await store.get_task(task))["head_version"] >= version:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task} did not reach version {version}")


@pytest.fixture(scope="class")
async def async_env(moto_server):
    spec = Deployment(prefix="badasync", clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    cfg = TaskConfig.parse(
        {
            "task_name": "bad-async",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_staleness": 0,
            "max_versions": 2,
            "max_update_norm": NORM_BOUND,
            "max_model_bytes": MAX_BYTES,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = dict(zip(CLIENTS, clients_for(stack, CLIENTS, (5, 5, 5)), strict=True))
        env = Env(stack, store, cfg.task_name, arn, clients)
        # b's good update from version 0 makes version 1; every case runs against it
        n0 = await notice_for(store, env.task)
        await clients["b"].submit(n0)
        accepted = await wait_verdict(store, env.task, keys.update_sk("b", "b-v00000000", None))
        assert accepted["verdict"] == "accepted"
        env.notes["head"] = await head_of(store, env.task)
        env.notes["x1"] = codec.decode(env.notes["head"][2])
        assert env.notes["head"][0] == 1
        env.notes["chain"] = await version_chain(store, env.task)
        assert env.notes["chain"] == {1: env.notes["head"][1]}
        yield env


class TestAsync:
    """One async task at version 1; every case against it (the one that ends it runs last)."""

    @pytest.mark.parametrize("case", PAYLOADS)
    async def test_async_bad_payload_is_rejected_and_the_head_does_not_move(self, async_env, case):
        # GIVEN the async task at version 1 WHEN client 'a' submits the bad payload
        build, reason, details = PAYLOADS[case]
        notice = await notice_for(async_env.store, async_env.task)
        record = await submit_case(async_env.clients["a"], notice, build, update_id=f"case-{case}")
        # THEN its item is rejected with the reason, the detail names task, client and problem
        item = await wait_verdict(async_env.store, async_env.task, record.sk)
        assert_rejected(item, reason, "'bad-async'", "'a'", *details)
        # AND the head version, its SHA-256 and its bytes are what they were
        await assert_head_unchanged(async_env)

    @pytest.mark.parametrize("case", RECORDS)
    async def test_async_bad_record_is_rejected_and_the_head_does_not_move(self, async_env, case):
        mutate, reason, details = RECORDS[case]
        item = mutate(await valid_item(async_env, "a", f"rec-{case}"))
        await put_raw(async_env.clients["a"], item)
        decided = await wait_verdict(async_env.store, async_env.task, item["sk"])
        assert_rejected(decided, reason, "'bad-async'", "'a'", *details)
        await assert_head_unchanged(async_env)

    async def test_async_update_from_a_client_not_in_the_task_is_rejected(self, async_env):
        base = async_env.clients["a"]
        # mallory has no role in this stack: the harness writes for it (IAM would stop
        # an outsider at the door; the server must reject the record all the same)
        outsider = async_env.stack.aws
        mallory = ScriptedClient(outsider, base.bucket, base.table, base.queue_url, "mallory", 0, 5)
        notice = await notice_for(async_env.store, async_env.task)
        record = await mallory.submit(notice, local_model(async_env.notes["x1"], 0, 1))
        item = await wait_verdict(async_env.store, async_env.task, record.sk)
        assert_rejected(item, "unknown_client", "'mallory'", "not one of the task's clients", "'a'")
        await assert_head_unchanged(async_env)

    async def test_async_update_for_a_task_that_does_not_exist_is_rejected(self, async_env):
        notice = (await notice_for(async_env.store, async_env.task)).model_copy(
            update={"task_name": "no-such-task"}
        )
        record = await async_env.clients["a"].submit(
            notice, local_model(async_env.notes["x1"], 0, 1)
        )
        item = await wait_verdict(async_env.store, "no-such-task", record.sk)
        assert_rejected(item, "unknown_task", "'no-such-task' does not exist")
        await assert_head_unchanged(async_env)

    @pytest.mark.runs_last  # it finishes the task the other cases share
    async def test_async_good_update_after_all_that_is_exact_and_a_replay_after_the_end_is_refused(
        self,
        async_env,
    ):
        env = async_env
        # GIVEN every bad input above was refused WHEN c submits a good update from version 1
        notice = await notice_for(env.store, env.task)
        x1 = codec.decode(env.notes["head"][2])
        record = await env.clients["c"].submit(notice)
        assert (await wait_verdict(env.store, env.task, record.sk))["verdict"] == "accepted"
        # THEN version 2 is x1 mixed with c's model at alpha 0.5, as if nothing bad had come
        c_model = local_model(x1, 2, 1)
        expected = {
            k: (0.5 * x1[k].astype(np.float64) + 0.5 * c_model[k].astype(np.float64)).astype(
                np.float32
            )
            for k in x1
        }
        assert (await wait_execution(env.stack, env.arn))["status"] == "SUCCEEDED"
        final = await head_of(env.store, env.task)
        assert final[0] == 2
        got = codec.decode(final[2])
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        # AND b's earlier accepted update is intact
        b_item = await env.store.get_item(env.task, keys.update_sk("b", "b-v00000000", None))
        assert (b_item["verdict"], b_item["seq"], b_item["applied_version"]) == ("accepted", 1, 1)
        # WHEN c's accepted update is replayed (same object, new id) after the task finished
        replay = await env.clients["c"].submit(notice, c_model, update_id="c-replay")
        item = await wait_verdict(env.store, env.task, replay.sk)
        # THEN it is refused and the final model is untouched
        assert_rejected(item, "task_finished", "'c-replay'", "'c'", "after the task finished")
        assert await head_of(env.store, env.task) == final

    async def test_control_queue_junk_is_dropped_with_a_reason_and_spares_the_batch(
        self, async_env, monkeypatch
    ):
        """server_lambdas/control.py: a message that can never parse, one the task's
        execution did not send and one for a task that does not exist are each logged with
        their reason and dropped (retrying cannot fix them); none stops the others."""
        from structlog.testing import capture_logs

        from server_lambdas import control

        env = async_env
        for name, value in env.stack.endpoints.handler_env().items():
            monkeypatch.setenv(name, value)
        before = await head_of(env.store, env.task)
        task_before = await env.store.get_task(env.task)
        good = {"kind": "open_task", "task_name": env.task, "task_token": "tok-" + "x" * 40}
        bodies = {
            "not-json": "{this is not json",
            "not-an-object": "[1, 2]",
            "schema-version-2": json.dumps({**good, "schema_version": 2}),
            "unknown-kind": json.dumps({**good, "kind": "explode"}),
            "missing-token": json.dumps({k: v for k, v in good.items() if k != "task_token"}),
            "well-formed-but-forged": json.dumps(good),
            "unknown-task": json.dumps({**good, "task_name": "no-such-task"}),
        }
        event = {
            "Records": [
                sqs_record(
                    {"MessageId": mid, "ReceiptHandle": f"rh-{mid}", "Body": body},
                    "arn:aws:sqs:us-east-1:123456789012:control",
                    "us-east-1",
                )
                for mid, body in bodies.items()
            ]
        }
        # WHEN the control handler gets a batch of them
        with capture_logs() as logged:
            response = control.lambda_handler(event, LocalLambdaContext("control"))
        # THEN none is kept for retry (and so none reaches the DLQ)
        assert response == {"batchItemFailures": []}
        rejected = {e["message_id"]: e for e in logged if e["event"] == "control.rejected"}
        assert set(rejected) == {
            "not-json",
            "not-an-object",
            "schema-version-2",
            "unknown-kind",
            "missing-token",
        }
        assert all(e["reason"] == "schema" for e in rejected.values())
        assert "not valid JSON" in rejected["not-json"]["detail"]
        assert "schema_version 2 is not supported" in rejected["schema-version-2"]["detail"]
        assert "kind" in rejected["unknown-kind"]["detail"]
        assert "task_token: Field required" in rejected["missing-token"]["detail"]
        # AND the forged one and the one for a missing task are logged with their reason
        [forged] = [e for e in logged if e["event"] == "control.forged"]
        assert forged["reason"] == "not_sent_by_execution"
        assert f"open_task for task {env.task!r} is not a message" in forged["detail"]
        [dropped] = [e for e in logged if e["event"] == "control.dropped"]
        assert dropped["reason"] == "unknown_task"
        assert "names task 'no-such-task', which does not exist" in dropped["detail"]
        assert not [e for e in logged if e["event"] == "control.failed"]
        # AND the global model and the TASK item (its token included) did not change
        assert await head_of(env.store, env.task) == before
        assert await env.store.get_task(env.task) == task_before


@pytest.fixture(scope="class")
async def sync_env(moto_server):
    spec = Deployment(prefix="badsync", clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    cfg = TaskConfig.parse(
        {
            "task_name": "bad-sync",
            "clients": list(CLIENTS),
            "min_clients": 2,
            # each case's round, then one round closed at its deadline without 'a'
            "rounds": len(SYNC_CASES) + 1,
            "round_timeout_s": ROUND_TIMEOUT_S,
            "max_update_norm": NORM_BOUND,
            "max_model_bytes": MAX_BYTES,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = dict(zip(CLIENTS, clients_for(stack, CLIENTS, (10, 30, 60)), strict=True))
        yield Env(stack, store, cfg.task_name, arn, clients, {"round": 0})


class TestSync:
    """One FedAvg round per case; the async stack is gone by now (one stack exports the env)."""

    @pytest.mark.parametrize("case", SYNC_CASES)
    async def test_sync_round_with_a_bad_update_is_fedavg_of_the_good_ones(self, sync_env, case):
        env, r = sync_env, sync_env.notes["round"]
        a, b, c = (env.clients[x] for x in CLIENTS)
        notices = [await round_notice(x, r) for x in (a, b, c)]
        x_r = codec.decode(await env.store.get_object(keys.global_key(env.task, r)))
        # WHEN in round r 'a' submits the bad payload and 'b', 'c' train honestly
        build, reason, details = {**PAYLOADS, **SYNC_ONLY}[case]
        bad = await submit_case(a, notices[0], build)
        await b.submit(notices[1])
        await c.submit(notices[2])
        # THEN a is rejected with its reason, and version r+1 is FedAvg of b and c alone
        await wait_head(env.store, env.task, r + 1)  # after a's record (stream order)
        assert_rejected(await wait_verdict(env.store, env.task, bad.sk), reason, "'a'", *details)
        expected = fedavg_by_hand([local_model(x_r, 1, r), local_model(x_r, 2, r)], (30, 60))
        got = codec.decode(await env.store.get_object(keys.global_key(env.task, r + 1)))
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        round_item = await env.store.get_item(env.task, keys.round_sk(r))
        assert round_item["members"] == [keys.update_sk(x, "", r) for x in ("b", "c")]
        # AND version r's object is untouched
        assert codec.sha256_bytes(codec.encode(x_r)) == codec.sha256_bytes(
            await env.store.get_object(keys.global_key(env.task, r))
        )
        env.notes["round"] = r + 1

    @pytest.mark.runs_last  # it finishes the task the other cases share
    async def test_sync_update_for_a_closed_round_and_after_the_end_are_refused(self, sync_env):
        env, r = sync_env, sync_env.notes["round"]
        a, b, c = (env.clients[x] for x in CLIENTS)
        notices = [await round_notice(x, r) for x in (a, b, c)]
        # GIVEN the last round closes at its deadline with b and c only (quorum 2)
        await b.submit(notices[1])
        await c.submit(notices[2])
        assert (await wait_execution(env.stack, env.arn, timeout_s=ROUND_TIMEOUT_S + 20))[
            "status"
        ] == "SUCCEEDED"
        final = await head_of(env.store, env.task)
        assert final[0] == r + 1
        # WHEN 'a' answers the closed round late
        late = await a.submit(notices[0])
        # THEN it is refused as a closed round, naming it; the final model stays
        assert_rejected(
            await wait_verdict(env.store, env.task, late.sk),
            "closed_round",
            "'a'",
            "'bad-sync'",
            f"after round {r} closed",
        )
        # WHEN 'a' replays its update as if for the next round, after the task finished
        later = notices[0].model_copy(update={"round_id": r + 1, "version": r + 1})
        replay = await a.submit(later, blob=await env.store.get_object(late.s3_key))
        assert_rejected(
            await wait_verdict(env.store, env.task, replay.sk),
            "task_finished",
            "'a'",
            "after the task finished",
        )
        assert await head_of(env.store, env.task) == final
        assert (await env.store.get_object(keys.final_key(env.task))) == final[2]
