"""A silo written from docs/protocol.md alone (examples/foreign_client.py: boto3, safetensors,
numpy) joins a sync task and an async task on the embedded stack, signing with its silo's
own keys, against the real ASL and handlers. The expected global models are computed here
by hand from the protocol's arithmetic (FedAvg by num_examples; FedAsync mixing)."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fedasync.aws.notices import SnsNotices
from fedasync.aws.objects import S3Objects
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.ops import taskctl
from fedasync.ops.events import export_ledger
from fedasync.resources import ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import wait_execution

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "foreign_client.py"
RUN_TIMEOUT_S = 120


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("foreign_client", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["foreign_client"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fc = load_example()


def initial_model() -> dict[str, np.ndarray]:
    return {
        "dense/kernel": np.array([[0.0, 2.0], [4.0, -2.0]], np.float32),
        "dense/bias": np.array([1.0, -3.0], np.float32),
    }


def silo_of(stack: EmbeddedStack, task: str, client_id: str):  # -> fc.Silo
    e = stack.endpoints
    keys_ = stack.credentials(f"client:{client_id}")
    return fc.Silo(
        task_name=task,
        client_id=client_id,
        queue_url=e.client_queue_urls[client_id],
        bucket=e.bucket,
        table=e.table,
        region=e.region,
        endpoint_url=e.endpoint_url,
        access_key_id=keys_.access_key_id,
        secret_access_key=keys_.secret_access_key,
        visibility_s=30,
        wait_s=1,
    )


async def global_model(store: ServerStore, task: str, version: int) -> codec.Weights:
    return codec.decode(await store.get_object(keys.global_key(task, version)))


def test_the_example_imports_neither_client_nor_fedasync():
    # GIVEN the example's source
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    # WHEN its imports are listed
    roots = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not (isinstance(node, ast.ImportFrom) and node.module is None)
    }
    # THEN beyond the standard library it uses boto3 (botocore), numpy and safetensors only
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"boto3", "botocore", "numpy", "safetensors"}


@pytest.fixture
async def stack(moto_server, prefix):
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id="a"), ClientSpec(client_id="b")))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as running:
        yield running


async def test_two_foreign_silos_run_a_sync_task_to_the_end(stack):
    # GIVEN a sync task of 2 rounds with silos a (100 examples) and b (300 examples)
    cfg = TaskConfig.parse(
        {"task_name": "fx", "clients": ["a", "b"], "rounds": 2, "min_clients": 2,
         "round_timeout_s": 90}
    )  # fmt: skip
    store = ServerStore(stack.aws, stack.endpoints)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN each is the foreign client, a nudging towards +1 and b towards -1 (rate 0.5)
    a = fc.ForeignClient(silo_of(stack, "fx", "a"), fc.nudge_towards(1.0, 0.5, 100))
    b = fc.ForeignClient(silo_of(stack, "fx", "b"), fc.nudge_towards(-1.0, 0.5, 300))
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            asyncio.to_thread(a.run, RUN_TIMEOUT_S), asyncio.to_thread(b.run, RUN_TIMEOUT_S)
        ),
        RUN_TIMEOUT_S + 10,
    )
    desc = await wait_execution(stack, arn)
    # THEN by hand: a sends w/2 + 1/2, b sends w/2 - 1/2, FedAvg (100 a + 300 b) / 400 is
    # w/2 - 1/4 per round; after 2 rounds w/4 - 3/8
    assert desc["status"] == "SUCCEEDED"
    x0 = initial_model()
    for version, (scale, shift) in ((1, (0.5, -0.25)), (2, (0.25, -0.375))):
        got = await global_model(store, "fx", version)
        for name, w in x0.items():
            np.testing.assert_allclose(got[name], scale * w.astype(np.float64) + shift, rtol=1e-6)
            assert got[name].dtype == np.float32
    # AND each silo sent one update per round, keyed by round, and saw the final notice
    for outcome, client_id in zip(outcomes, "ab", strict=True):
        assert [u["sk"] for u in outcome.updates] == [
            f"UPDATE#00000000#{client_id}",
            f"UPDATE#00000001#{client_id}",
        ]
        assert outcome.final["final"] is True
        assert outcome.final["s3_key"] == "fx/final.safetensors"
    final = await store.get_object(keys.final_key("fx"))
    assert codec.sha256_bytes(final) == outcomes[0].final["sha256"]
    # AND the silos' eval_loss (mean |target - w| over the tensors of the model received)
    # is kept per round, weighted 100:300. By hand, round 0: a 2, b 2.25 -> 2.1875;
    # round 1 (w/2 - 1/4): a 1.4375, b 1.1875 -> 1.25. In `task status` and the ledger
    status = await taskctl.status(
        stack.aws, stack.endpoints, "fx"
    )
    ledger = [e for e in await export_ledger(store, "fx") if e["kind"] == "evaluation"]
    for entries in (status["evaluation"], ledger):
        assert [e["version"] for e in entries] == [0, 1]
        means = [e["metrics"]["eval_loss"] for e in entries]
        assert [m["mean"] for m in means] == [pytest.approx(2.1875), pytest.approx(1.25)]
        assert [(m["num_examples"], m["silos"]) for m in means] == [(400, 2), (400, 2)]


async def test_a_foreign_silo_runs_an_async_task_to_max_versions(stack):
    # GIVEN an async FedAsync task (alpha 0.5, constant staleness) of 3 versions, one silo
    cfg = TaskConfig.parse(
        {"task_name": "fy", "mode": "async", "clients": ["a"], "alpha": 0.5,
         "staleness": "constant", "max_versions": 3}
    )  # fmt: skip
    store = ServerStore(stack.aws, stack.endpoints)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN silo a, the foreign client, nudges towards +1 at rate 0.5 on every go-ahead
    silo = fc.ForeignClient(silo_of(stack, "fy", "a"), fc.nudge_towards(1.0, 0.5, 50))
    outcome = await asyncio.wait_for(asyncio.to_thread(silo.run, RUN_TIMEOUT_S), RUN_TIMEOUT_S + 10)
    desc = await wait_execution(stack, arn)
    # THEN by hand: the silo sends x/2 + 1/2 from the head (staleness 0), the server mixes
    # x/2 + (x/2 + 1/2)/2 = 3x/4 + 1/4; after 3 versions 27x/64 + 37/64
    assert desc["status"] == "SUCCEEDED"
    x0 = initial_model()
    got = await global_model(store, "fy", 3)
    for name, w in x0.items():
        np.testing.assert_allclose(got[name], 27 / 64 * w.astype(np.float64) + 37 / 64, rtol=1e-6)
    # AND its updates were based on versions 0, 1, 2 (and perhaps 3: the go-ahead on the
    # last version may beat the final notice; docs/protocol.md §1.3), with no round id
    bases = [u["base_version"] for u in outcome.updates]
    assert bases[:3] == ["0", "1", "2"] and set(bases[3:]) <= {"3"}
    assert all("round_id" not in u for u in outcome.updates)
    assert all(u["update_id"].startswith("a-b0000000") for u in outcome.updates)
    assert outcome.final["version"] == 3 and outcome.final["final"] is True


@pytest.fixture
async def bare_stack(moto_server, prefix):
    """No server handlers: the test plays the server (globals in S3, notices on SNS)."""
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id="a"),))
    async with EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, aggregate_handler=None, control_handler=None
    ) as running:
        yield running


async def test_a_notice_whose_model_is_corrupt_is_kept_not_trained_and_a_newer_one_wins(
    bare_stack, wait_until
):
    stack = bare_stack
    objects = S3Objects(stack.aws, stack.endpoints.bucket)

    async def announce(version: int, *, sha: str | None = None, final: bool = False) -> None:
        key = keys.final_key("fz") if final else keys.global_key("fz", version)
        blob = codec.encode(initial_model())
        await objects.put_bytes(key, blob, codec.sha256_bytes(blob))
        notice = GlobalModelNotice(
            task_name="fz", mode="async", version=version, seq=None if final else version,
            s3_key=key, sha256=sha or codec.sha256_bytes(blob), size_bytes=len(blob), final=final,
        )  # fmt: skip
        notices = SnsNotices(stack.aws, stack.endpoints.topic_arn, stack.endpoints.topic_shards)
        await notices.publish(notice, ("a",))

    # GIVEN a notice for version 0 whose announced SHA-256 is not the object's
    await announce(0, sha="0" * 64)
    silo = fc.ForeignClient(silo_of(stack, "fz", "a"), fc.nudge_towards(1.0))
    run = asyncio.ensure_future(asyncio.to_thread(silo.run, RUN_TIMEOUT_S))
    sqs = await stack.aws.sqs()

    async def in_flight() -> bool:
        attrs = await sqs.get_queue_attributes(
            QueueUrl=stack.endpoints.client_queue_urls["a"],
            AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
        )
        return attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"

    # WHEN the silo receives it
    await wait_until(in_flight, timeout_s=30)
    # THEN nothing is trained or uploaded, and the message is kept (in flight, not deleted)
    await asyncio.sleep(1.0)
    assert silo.outcome.updates == [] and await in_flight()
    # AND WHEN a sound version 1 and then the final notice come, version 1 is trained on
    # (the kept notice, older, would be deleted unacted when it comes back) and it ends
    await announce(1)
    await wait_until(lambda: silo.outcome.updates, timeout_s=30)
    await announce(2, final=True)
    outcome = await asyncio.wait_for(run, RUN_TIMEOUT_S)
    assert [u["base_version"] for u in outcome.updates] == ["1"]
    assert outcome.final is not None and outcome.final["final"] is True
