"""Hostile inputs from the review of issue 19, on the embedded stack over HTTP.

The scripted async task of the fault suite (FedAsync, clients a, b, c with 10, 30 and 60
examples, six updates in a fixed order) runs with one silo, 'a', misbehaving; each case
checks the recorded reasons, that the chain of global models (their SHA-256 values) is
the clean reference run's, and that the honest silos' updates keep being accepted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from fedasync.aws.records import serialize_item
from fedasync.cli import app
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.local.stack import EmbeddedStack
from fedasync.policy.definitions import CLIENT_ITEM_ATTRIBUTES
from fedasync.server.tasks import start_task
from tests.call_audit import expect_refused
from tests.faults.harness import (
    ASYNC_UPDATES,
    CLIENTS,
    EXAMPLES,
    Outcome,
    all_decided,
    config,
    next_notice,
    outcome_of,
    stack_for,
)
from tests.integration.scripted import ScriptedClient
from tests.integration.test_server_sync import (
    clients_for,
    initial_model,
    store_for,
    wait_execution,
)

Metrics = Callable[[str, int], dict[str, float]]
Hostile = Callable[[dict[str, ScriptedClient], str], Awaitable[int]]


async def run_script(
    stack: EmbeddedStack,
    cfg: TaskConfig,
    *,
    metrics: Metrics | None = None,
    hostile: Hostile | None = None,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """The harness's async script, with metrics per update and hostile items written by
    silo credentials before the honest updates; the outcome and every decided item."""
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    clients = clients_for(stack, CLIENTS, EXAMPLES)
    by_id = {c.client_id: c for c in clients}
    notices = {c.client_id: await next_notice(c, cfg.task_name) for c in clients}
    extra = await hostile(by_id, cfg.task_name) if hostile else 0
    for client_id, k in ASYNC_UPDATES:
        weights = {name: w + 0.1 * (k + 1) for name, w in initial_model().items()}
        over = {"metrics": metrics(client_id, k)} if metrics else {}
        await by_id[client_id].submit(
            notices[client_id], weights, update_id=f"{client_id}-v{k:08d}", **over
        )
    desc = await wait_execution(stack, arn, 90)
    items = await all_decided(store, cfg.task_name, count=len(ASYNC_UPDATES) + extra)
    return await outcome_of(store, cfg, desc), items


def _by_sk(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(i["sk"]): i for i in items}


# --- item 2: one rejected record must not break `events export` -----------------------

JUNK: dict[str, dict[str, Any]] = {
    "a-junk-examples": {"num_examples": "many"},
    "a-junk-base": {"base_version": "zero"},
    "a-junk-round": {"round_id": "one"},
    "a-junk-forged": {"seq": "seven", "weight": "heavy", "applied_version": "last"},
}


async def _write_junk(clients: dict[str, ScriptedClient], task: str) -> int:
    """Silo 'a' puts update items with strings where numbers belong (its role may), and
    one with server-owned attributes (its role may not: the audit is told so)."""
    a = clients["a"]
    ddb = await a.aws.dynamodb()
    for update_id, spoiled in JUNK.items():
        item = {
            "task_name": task,
            "sk": keys.update_sk("a", update_id, None),
            "client_id": "a",
            "update_id": update_id,
            "base_version": 0,
            "s3_key": keys.local_key(task, "a", 0, update_id),
            "sha256": "0" * 64,
            "size_bytes": 1,
            "num_examples": 5,
            "metrics": {},
            **spoiled,
        }
        if set(item) - set(CLIENT_ITEM_ATTRIBUTES):
            expect_refused("client:a", "dynamodb:PutItem", f"*:table/{a.table}")
        await ddb.put_item(TableName=a.table, Item=serialize_item(item))
    return len(JUNK)


async def test_rejected_junk_records_are_exported_as_received_and_replay_is_exact(
    moto_server, prefix, reference, tmp_path
):
    # GIVEN the scripted FedAsync task, where silo 'a' first writes four junk records
    cfg = config("fedasync", "junk-export")
    async with stack_for(moto_server, prefix) as stack:
        outcome, items = await run_script(stack, cfg, hostile=_write_junk)
        where = ["--endpoint", stack.endpoints.endpoint_url, "--prefix", stack.spec.prefix]
        ledger, objects = tmp_path / "junk.jsonl", tmp_path / "objects"
        # WHEN its ledger is exported (objects along) and replayed
        exported = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "events",
                "export",
                cfg.task_name,
                "--out",
                str(ledger),
                "--objects",
                str(objects),
                *where,
            ],
        )
        replayed = await asyncio.to_thread(
            CliRunner().invoke, app, ["replay", str(ledger), "--objects", str(objects)]
        )
    # THEN each junk record was rejected for its schema, naming the bad field
    decided = _by_sk(items)
    for update_id, spoiled in JUNK.items():
        item = decided[keys.update_sk("a", update_id, None)]
        assert (item["verdict"], item["reason"]) == ("rejected", "schema"), item
        assert any(name in item["detail"] for name in spoiled), item["detail"]
    # AND the chain of global models is the clean run's, every honest update accepted
    clean = reference["fedasync"]
    assert outcome.status == "SUCCEEDED", outcome.cause
    assert outcome.version_sha256 == clean.version_sha256
    assert (outcome.final_sha256, outcome.accepted) == (clean.final_sha256, 6)
    # AND the export succeeded and carries the junk as it was received
    assert exported.exit_code == 0, exported.output
    events = [json.loads(line) for line in ledger.read_text().splitlines()]
    junk = {
        e["update_id"]: e for e in events if e["kind"] == "update" and e["verdict"] == "rejected"
    }
    assert junk["a-junk-examples"]["num_examples"] == "many"
    assert junk["a-junk-base"]["base_version"] == "zero"
    assert junk["a-junk-round"]["round_id"] == "one"
    assert junk["a-junk-forged"]["seq"] is None
    assert junk["a-junk-forged"]["record"]["seq"] == "seven"
    versions = {e["version"]: e["sha256"] for e in events if e["kind"] == "version"}
    assert versions == {v: s for v, s in clean.version_sha256.items() if v > 0}
    # AND the replay rebuilds every version byte for byte
    assert replayed.exit_code == 0, replayed.output
    assert f"final sha256: {clean.final_sha256}" in replayed.output


# --- item 9: one silo cannot stop an async task ----------------------------------------

HUGE = 1e100  # within DynamoDB's number range: what a silo can actually write


def _with_target(name: str) -> TaskConfig:
    base = config("fedasync", name).model_dump(mode="json", exclude_unset=True)
    return TaskConfig.parse({**base, "target_metric": {"name": "eval_accuracy", "threshold": 0.9}})


def _honest_at(value: Callable[[str, int], float]) -> Metrics:
    def metrics(client_id: str, k: int) -> dict[str, float]:
        return {"eval_accuracy": HUGE if client_id == "a" else value(client_id, k)}

    return metrics


async def test_one_silo_reporting_a_huge_target_value_does_not_stop_the_task(
    moto_server, prefix, reference
):
    # GIVEN a task with target eval_accuracy >= 0.9 (quorum: 2 of 3 silos)
    cfg = _with_target("huge-alone")
    assert cfg.target_reporters == 2
    async with stack_for(moto_server, prefix) as stack:
        # WHEN 'a' reports 1e100 on every update and 'b', 'c' report 0.5
        outcome, items = await run_script(stack, cfg, metrics=_honest_at(lambda c, k: 0.5))
        task = await store_for(stack).get_task(cfg.task_name)
    # THEN the task runs to max_versions: the median of the reports is 0.5
    assert task["finished"] == "max_versions"
    reported = task["latest_metrics"]["a"]  # (DynamoDB gives an integral number back as int)
    assert (float(reported["value"]), reported["num_examples"]) == (HUGE, 10)
    # AND the chain of global models is the clean run's, every update accepted
    clean = reference["fedasync"]
    assert outcome.status == "SUCCEEDED", outcome.cause
    assert outcome.version_sha256 == clean.version_sha256
    assert outcome.final_sha256 == clean.final_sha256
    assert {i["verdict"] for i in items} == {"accepted"}


async def test_the_target_stops_the_task_once_silos_holding_most_examples_reach_it(
    moto_server, prefix, reference
):
    # GIVEN the same task, 'a' (10 examples) reporting 1e100, 'b' (30) and 'c' (60) 0.5,
    # until b's second update (k = 4) reports 0.95
    cfg = _with_target("huge-and-b")
    metrics = _honest_at(lambda c, k: 0.95 if (c, k) == ("b", 4) else 0.5)
    async with stack_for(moto_server, prefix) as stack:
        outcome, items = await run_script(stack, cfg, metrics=metrics)
        task = await store_for(stack).get_task(cfg.task_name)
    # THEN it stops right after b's update (version 5): weights are examples clipped at
    # the median count 30, so a 10, b 30, c 30 of 70; best first, a and b hold 40 > 35
    # and both report >= 0.95 (before it, a and b's 0.5 held 40: the median was 0.5)
    assert task["finished"] == "target_metric"
    assert (task["final_version"], outcome.head_version) == (5, 5)
    # AND versions 0-5 are the clean run's, byte for byte
    clean = reference["fedasync"]
    assert outcome.version_sha256 == {v: clean.version_sha256[v] for v in range(6)}
    # AND every update before the stop was accepted; c's last came after the end
    decided = _by_sk(items)
    last = decided[keys.update_sk("c", "c-v00000005", None)]
    assert (last["verdict"], last["reason"]) == ("rejected", "task_finished")
    assert sum(1 for i in items if i["verdict"] == "accepted") == 5
    assert outcome.status == "SUCCEEDED", outcome.cause


@pytest.mark.parametrize("name", ["accuracy", "train_accuracy"])
def test_a_target_on_a_training_metric_is_refused_at_start(name):
    # GIVEN a task whose target is a metric no client reports as an evaluation
    # THEN the config is refused, pointing at the eval_ name
    from fedasync.core.errors import ConfigError

    with pytest.raises(ConfigError, match="'eval_accuracy'"):
        TaskConfig.parse(
            {
                "task_name": "t",
                "mode": "async",
                "clients": ["a"],
                "target_metric": {"name": name, "threshold": 0.9},
            }
        )
