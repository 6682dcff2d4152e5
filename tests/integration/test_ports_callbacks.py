"""Contract of the Step Functions port, on the real ASL run by moto (no control pump:
the test reads the control queue itself and answers with the port)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fedasync.aws.callbacks import CallbackOutcome, Execution, SfnCallbacks
from fedasync.aws.queues import SqsQueues
from fedasync.aws.records import DynamoRecords, Put
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.local.provision import StackEndpoints, provision
from fedasync.resources import StackSpec


@pytest.fixture
async def endpoints(aws: AwsContext, prefix: str) -> StackEndpoints:
    return await provision(aws, StackSpec(prefix=prefix))


async def finished(callbacks: SfnCallbacks, arn: str) -> Execution:
    execution = await callbacks.describe_execution(arn)
    while execution.running:
        await asyncio.sleep(0.05)
        execution = await callbacks.describe_execution(arn)
    return execution


async def start_async_task(
    aws: AwsContext, endpoints: StackEndpoints, name: str, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """Start an async task; return its execution ARN and its open_task control message."""
    await DynamoRecords(aws, endpoints.where().decisions).put(
        Put(name, keys.TASK_SK, {"status": "PENDING"})
    )
    task = {
        "task_name": name,
        "mode": "async",
        "rounds": 1,
        "min_clients": 1,
        "round_timeout_s": 5,
        "heartbeat_s": 30,
        "deadline_s": 60,
        **overrides,
    }
    arn = await SfnCallbacks(aws).start_execution(endpoints.state_machine_arn, name, task)
    queues = SqsQueues(aws)
    [message] = await queues.receive(endpoints.control_queue_url, wait_s=10)
    await queues.delete(endpoints.control_queue_url, message.receipt_handle)
    return arn, json.loads(message.body)


async def test_success_is_delivered_once_and_a_repeat_is_already_done(
    aws: AwsContext, endpoints: StackEndpoints
) -> None:
    callbacks = SfnCallbacks(aws)
    arn, message = await start_async_task(aws, endpoints, "digits")
    # GIVEN the open_task message the ASL sent
    assert {k: v for k, v in message.items() if k != "task_token"} == {
        "schema_version": 1,
        "kind": "open_task",
        "task_name": "digits",
    }
    token = message["task_token"]
    # WHEN the aggregator heartbeats, reports its stop, and once the execution has moved
    # on reports it again (a redelivered event) and heartbeats late
    beat = await callbacks.send_task_heartbeat(token)
    first = await callbacks.send_task_success(token, {"finished": True, "version": 5})
    execution = await finished(callbacks, arn)
    second = await callbacks.send_task_success(token, {"finished": True, "version": 5})
    late_beat = await callbacks.send_task_heartbeat(token)
    # THEN the first answers were delivered, the late ones are "already done", not errors
    assert (beat, first) == (CallbackOutcome.DELIVERED, CallbackOutcome.DELIVERED)
    assert (second, late_beat) == (CallbackOutcome.ALREADY_DONE, CallbackOutcome.ALREADY_DONE)
    assert execution.status == "SUCCEEDED"
    assert execution.output["task_result"] == {"finished": True, "version": 5}


async def test_failure_fails_the_execution_readably(
    aws: AwsContext, endpoints: StackEndpoints
) -> None:
    callbacks = SfnCallbacks(aws)
    arn, message = await start_async_task(aws, endpoints, "broken")
    outcome = await callbacks.send_task_failure(message["task_token"], "ModelCorrupt", "x")
    execution = await finished(callbacks, arn)
    assert outcome is CallbackOutcome.DELIVERED
    assert (execution.status, execution.error) == ("FAILED", "TaskFailed")
    assert execution.cause == 'task "broken" failed with ModelCorrupt'


async def test_starting_the_same_execution_twice_returns_the_first(
    aws: AwsContext, endpoints: StackEndpoints
) -> None:
    callbacks = SfnCallbacks(aws)
    arn, message = await start_async_task(aws, endpoints, "twice")
    again = await callbacks.start_execution(endpoints.state_machine_arn, "twice", {})
    assert again == arn
    await callbacks.send_task_success(message["task_token"], {"finished": True})


async def test_an_unknown_token_is_already_done(aws: AwsContext) -> None:
    assert await SfnCallbacks(aws).send_task_heartbeat("no-such-token") is (
        CallbackOutcome.ALREADY_DONE
    )
