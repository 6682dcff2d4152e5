"""The trust boundary (issue 20): what silos write is an inbox the server reads once and
never trusts again; what the server decides lives in the server table, out of every silo
role's reach. The probes of the issue, on the embedded stack:

- B1: a decided update's inbox item re-put with `verdict = accepted`, pointing at a NaN
  object: the decision stands, the ledger's chain is unchanged, the models stay finite;
- B3: the same valid record put a second time: decision, `seq` and `applied_version`
  intact, the sync round completes, an async replay loses no version;
- B4: junk squatting `UPDATE#{next round}#victim`: the victim neither skips its update
  nor fails the task (IAM cannot bind a sort key to its writer: the server rejects the
  junk, and the victim's own record, which names its own object, replaces it);
- a silo's principal cannot read the TASK item (where the task token lives) at all.

Expected models come from `fedavg_by_hand` / the FedAsync formula on the scripted
clients' models, never from the server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.config import ClientConfig
from client.ports import AwsClientPorts
from fedasync.aws.records import serialize_item
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import UpdateRecord
from fedasync.core.replay import replay
from fedasync.deployment import Deployment
from fedasync.local.principals import stack_arns
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.events import export_ledger
from fedasync.policy.definitions import client_statements
from fedasync.policy.evaluate import Request, Statement, evaluate
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.call_audit import expect_refused
from tests.faults.test_bad_input import round_notice, version_chain, wait_head, wait_verdict
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)

CLIENTS = ("a", "b", "c")
EXAMPLES = (10, 30, 60)


async def model_at(env: dict[str, Any], version: int) -> dict[str, np.ndarray]:
    return codec.decode(await env["store"].get_object(keys.global_key(env["task"], version)))


async def put_item(client: ScriptedClient, item: dict[str, Any]) -> None:
    """A plain PutItem as the client's own principal: no condition, overwriting."""
    ddb = await client.aws.dynamodb()
    await ddb.put_item(TableName=client.table, Item=serialize_item(item))


def inbox_item(record: UpdateRecord) -> dict[str, Any]:
    return {"task_name": record.task_name, **record.item()}


def assert_finite(weights: dict[str, np.ndarray]) -> None:
    assert all(np.isfinite(v).all() for v in weights.values())


@pytest.fixture(scope="class")
async def sync_env(moto_server):
    spec = Deployment(prefix="trust", clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    # every client is needed for a round (min_clients 3): a silo made to skip its update
    # would fail the round at its deadline, and with it the task
    cfg = TaskConfig.parse(
        {
            "task_name": "trust-sync",
            "clients": list(CLIENTS),
            "min_clients": 3,
            "rounds": 3,
            "round_timeout_s": 60,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = dict(zip(CLIENTS, clients_for(stack, CLIENTS, EXAMPLES), strict=True))
        yield {"stack": stack, "store": store, "task": cfg.task_name, "arn": arn,
               "clients": clients, "notes": {}}  # fmt: skip


@pytest.mark.in_file_order
class TestSync:
    """One sync task of three rounds; the cases run in file order against it."""

    async def test_a_silo_cannot_read_or_write_the_server_table(self, sync_env):
        # GIVEN a started task, whose TASK item holds its config and (once open) its token
        stack, task = sync_env["stack"], sync_env["task"]
        server_table = stack.endpoints.server_table
        silo = await stack.principal_aws("client:a").dynamodb()
        key = serialize_item({"task_name": task, "sk": keys.TASK_SK})
        # WHEN silo a asks for the TASK item in the server table, or writes there
        # THEN both are refused: moto scopes no DynamoDB resource, so the call audit
        # judges them against the synthesized template (declared here, judged at the end)
        for action in ("dynamodb:GetItem", "dynamodb:PutItem"):
            expect_refused("client:a", action, f"*:table/{server_table}")
        await silo.get_item(TableName=server_table, Key=key)
        # (a key nothing reads: moto would let the write land)
        probe = serialize_item({"task_name": task, "sk": "PROBE#a", "token": "mine"})
        await silo.put_item(TableName=server_table, Item=probe)
        # AND the policy definition refuses them outright: no silo statement names the table
        arns = stack_arns(stack.spec, stack.endpoints.stream_arn)
        queue = f"arn:aws:sqs:us-east-1:123456789012:{stack.spec.client_queue_name('a')}"
        statements = [Statement.from_json(s) for s in client_statements("a", queue, arns)]
        for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"):
            decision = evaluate(statements, Request("client:a", action, arns.server_table, {}))
            assert (decision.allowed, decision.near_misses) == (False, ()), action
        # AND the inbox, which the silo may probe (key and object name only), holds no TASK
        got = await silo.get_item(
            TableName=stack.endpoints.table,
            Key=key,
            ProjectionExpression="#pk, #sk",
            ExpressionAttributeNames={"#pk": "task_name", "#sk": "sk"},
        )
        assert "Item" not in got
        assert (await sync_env["store"].get_task(task))["config"]

    async def test_b1_a_forged_verdict_on_a_decided_update_changes_nothing(self, sync_env):
        env, notes = sync_env, sync_env["notes"]
        store, task = env["store"], env["task"]
        a, b, c = (env["clients"][x] for x in CLIENTS)
        # GIVEN round 0 decided: a, b and c accepted, version 1 committed
        x0 = await model_at(env, 0)
        records = [await x.submit(await round_notice(x, 0)) for x in (a, b, c)]
        await wait_head(store, task, 1)
        decided = await store.get_item(task, records[0].sk)
        assert (decided["verdict"], decided["sha256"]) == ("accepted", records[0].sha256)
        chain = await version_chain(store, task)
        assert set(chain) == {1}
        # WHEN a re-puts its decided item with verdict=accepted, pointing at a NaN object
        nan_model = {k: np.full_like(v, np.nan) for k, v in x0.items()}
        nan_blob = codec.encode(nan_model)
        nan_key = keys.local_key(task, "a", 0, "r00000000-nan")
        await (await a.aws.s3()).put_object(Bucket=a.bucket, Key=nan_key, Body=nan_blob)
        forged = {**inbox_item(records[0]), "s3_key": nan_key,
                  "sha256": codec.sha256_bytes(nan_blob), "size_bytes": len(nan_blob),
                  "verdict": "accepted", "applied_version": 1}  # fmt: skip
        # (the deployed role refuses server attributes, dynamodb:Attributes; moto cannot
        # tell, so this shows what the server does if IAM ever let it through)
        expect_refused("client:a", "dynamodb:PutItem", f"*:table/{a.table}")
        await put_item(a, forged)
        notes["b1"] = {"decided": decided, "chain": chain, "records": records, "x0": x0}
        # THEN a's decision is the one taken, on the record it validated
        await asyncio.sleep(0.5)
        assert await store.get_item(task, records[0].sk) == decided
        # AND version 1 is FedAvg of the three honest models, its chain unchanged
        expected = fedavg_by_hand([local_model(x0, i, 0) for i in range(3)], EXAMPLES)
        got = await model_at(env, 1)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        assert await version_chain(store, task) == chain

    async def test_b4_junk_squatting_the_victims_next_key_does_not_cost_it_its_update(
        self, sync_env, tmp_path: Path
    ):
        env, notes = sync_env, sync_env["notes"]
        store, task, stack = env["store"], env["task"], env["stack"]
        a, b, c = (env["clients"][x] for x in CLIENTS)
        # GIVEN silo b squats UPDATE#{round 1}#c with junk, before round 1's notices
        squat_sk = keys.update_sk("c", "", 1)
        junk = {"task_name": task, "sk": squat_sk, "client_id": "c", "update_id": "r00000001",
                "base_version": 1, "round_id": 1, "s3_key": keys.local_key(task, "b", 1, "x"),
                "sha256": "0" * 64, "size_bytes": 1, "num_examples": 10**6}  # fmt: skip
        await put_item(b, junk)  # IAM cannot refuse it: no condition binds a sort key
        x1 = await model_at(env, 1)
        notices = {x.client_id: await round_notice(x, 1) for x in (a, b, c)}
        # THEN the server rejects the junk (its object is outside c's prefix)
        rejected = await wait_verdict(store, task, squat_sk)
        assert (rejected["verdict"], rejected["reason"]) == ("rejected", "spoofed_key")
        # WHEN a and b submit, and c runs the silo's own check-then-put (client/ports.py)
        await a.submit(notices["a"])
        await b.submit(notices["b"])
        cfg = ClientConfig(task_name=task, client_id="c", endpoint_url=stack.endpoints.endpoint_url,
                           prefix="trust", part_size=8 * 1024 * 1024)  # fmt: skip
        ports = AwsClientPorts(stack.principal_aws("client:c"), cfg, c.queue_url)
        blob = codec.encode(local_model(x1, 2, 1))
        c_key = keys.local_key(task, "c", 1, "r00000001")
        # THEN c does not take the squatter's item for its own record
        assert not await ports.update_exists(task, squat_sk, c_key)
        await (await c.aws.s3()).put_object(Bucket=c.bucket, Key=c_key, Body=blob)
        record = UpdateRecord(task_name=task, client_id="c", update_id="r00000001",
                              base_version=1, round_id=1, s3_key=c_key,
                              sha256=codec.sha256_bytes(blob), size_bytes=len(blob),
                              num_examples=60)  # fmt: skip
        # AND its put replaces the junk (a retry of the same record is refused)
        assert await ports.put_update(record)
        assert not await ports.put_update(record)
        assert await ports.update_exists(task, squat_sk, c_key)
        # AND round 1 closes with all three: version 2 is FedAvg of a, b and c's models
        await wait_head(store, task, 2)
        decided = await store.get_item(task, squat_sk)
        assert (decided["verdict"], decided["sha256"]) == ("accepted", record.sha256)
        assert decided["superseded"][0]["reason"] == "spoofed_key"
        expected = fedavg_by_hand([local_model(x1, i, 1) for i in range(3)], EXAMPLES)
        got = await model_at(env, 2)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        # AND B1's forged re-put is still nothing: a's round-0 decision, the chain's v1
        b1 = notes["b1"]
        assert await store.get_item(task, b1["records"][0].sk) == b1["decided"]
        assert (await version_chain(store, task))[1] == b1["chain"][1]

    async def test_b3_a_plain_reput_of_the_same_record_keeps_the_decision(self, sync_env):
        env = sync_env
        store, task = env["store"], env["task"]
        a, b, c = (env["clients"][x] for x in CLIENTS)
        x2 = await model_at(env, 2)
        # GIVEN a's round-2 update accepted
        record = await a.submit(await round_notice(a, 2))
        decided = await wait_verdict(store, task, record.sk)
        assert (decided["verdict"], decided["applied_version"]) == ("accepted", 3)
        # WHEN a puts the very same record again (a plain PutItem, which IAM allows)
        await put_item(a, inbox_item(record))
        await b.submit(await round_notice(b, 2))
        await c.submit(await round_notice(c, 2))
        # THEN the round completes with a in it, a's decision untouched
        await wait_head(store, task, 3)
        assert await store.get_item(task, record.sk) == decided
        round_item = await store.get_item(task, keys.round_sk(2))
        assert round_item["members"] == [keys.update_sk(x, "", 2) for x in CLIENTS]
        # AND the task succeeds with the FedAvg of the honest models, finite
        assert (await wait_execution(env["stack"], env["arn"]))["status"] == "SUCCEEDED"
        expected = fedavg_by_hand([local_model(x2, i, 2) for i in range(3)], EXAMPLES)
        final = codec.decode(await store.get_object(keys.final_key(task)))
        assert_finite(final)
        for name in expected:
            np.testing.assert_array_equal(final[name], expected[name])
        # AND the ledger replays to the recorded head, every version rebuilt
        result = await replay_of(store, task)
        assert result.ok, result.problems
        assert [check.version for check in result.checks] == [1, 2, 3]


async def replay_of(store, task: str):
    events = await export_ledger(store, task)

    async def fetch(key: str) -> bytes:
        return await store.get_object(key)

    blobs = {}
    for event in events:
        for key in _keys_of(event):
            blobs[key] = await fetch(key)
    return replay(events, blobs.__getitem__)


def _keys_of(event: dict[str, Any]) -> list[str]:
    if event["kind"] == "task":
        return [event["initial"]["s3_key"]]
    if event["kind"] == "update" and event.get("verdict") == "accepted":
        return [event["record"]["s3_key"]]
    return []


@pytest.fixture(scope="class")
async def async_env(moto_server):
    spec = Deployment(prefix="trustasync", clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
    cfg = TaskConfig.parse(
        {
            "task_name": "trust-async",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_staleness": 0,
            "max_versions": 3,
        }
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        clients = dict(zip(CLIENTS, clients_for(stack, CLIENTS, EXAMPLES), strict=True))
        yield {"stack": stack, "store": store, "task": cfg.task_name, "arn": arn,
               "clients": clients}  # fmt: skip


async def async_notice(store, task: str, version: int):
    from fedasync.server.task_view import TaskView

    for _ in range(400):
        view = TaskView.from_item(task, await store.get_task(task))
        if view.head_version == version:
            return view.notice(version, seq=view.state.absorbed)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task} did not reach version {version}")


class TestAsync:
    async def test_b3_async_a_reput_loses_no_version_on_replay(self, async_env):
        env = async_env
        store, task = env["store"], env["task"]
        a, b, c = (env["clients"][x] for x in CLIENTS)
        # GIVEN a's update from version 0 absorbed as seq 1 (version 1)
        x0 = await model_at(env, 0)
        first = await a.submit(await async_notice(store, task, 0))
        decided = await wait_verdict(store, task, first.sk)
        assert (decided["verdict"], decided["seq"], decided["applied_version"]) == (
            "accepted",
            1,
            1,
        )
        # WHEN a puts the same record again, and b, then c, submit on the new heads
        await put_item(a, inbox_item(first))
        await b.submit(await async_notice(store, task, 1))
        await c.submit(await async_notice(store, task, 2))
        assert (await wait_execution(env["stack"], env["arn"]))["status"] == "SUCCEEDED"
        # THEN a's verdict, seq and applied version are intact
        assert await store.get_item(task, first.sk) == decided
        # AND version v+1 is FedAsync at alpha 0.5 of version v and the model trained on
        # it by client v (a, b, c), computed here
        expected = x0
        for index in range(3):
            client_w = local_model(expected, index, index)
            expected = {k: (0.5 * expected[k].astype(np.float64)
                            + 0.5 * client_w[k].astype(np.float64)).astype(np.float32)
                        for k in expected}  # fmt: skip
        final = codec.decode(await store.get_object(keys.final_key(task)))
        assert_finite(final)
        for name in expected:
            np.testing.assert_array_equal(final[name], expected[name])
        # AND replay rebuilds every version up to the recorded head
        result = await replay_of(store, task)
        assert result.ok, result.problems
        assert [check.version for check in result.checks] == [1, 2, 3]
        assert result.applied == 3
