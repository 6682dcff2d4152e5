"""Contract of the Step Functions port, on the real ASL run by moto (no control pump:
the test reads the control queue itself and answers with the port). The tests at the end
hold the in-memory implementation (the server's unit tier) to the same contract."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fedasync.aws.executions import (
    Execution,
    ExecutionNotFoundError,
    Executions,
    SfnExecutions,
    execution_arn_for,
)
from fedasync.aws.memory import MemoryExecutions
from fedasync.aws.queues import SqsQueues
from fedasync.aws.records import DynamoRecords
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.deployment import Deployment
from fedasync.local.provision import provision


@pytest.fixture
async def endpoints(aws: AwsContext, prefix: str) -> Deployment:
    return await provision(aws, Deployment(prefix=prefix))


async def finished(executions: SfnExecutions, arn: str) -> Execution:
    execution = await executions.describe(arn)
    while execution.running:
        await asyncio.sleep(0.05)
        execution = await executions.describe(arn)
    return execution


async def start_async_task(
    aws: AwsContext, endpoints: Deployment, name: str, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """Start an async task; return its execution ARN and its open_task control message."""
    await DynamoRecords(aws, endpoints.server_table).put(
        {"task_name": name, "sk": keys.TASK_SK, "status": "PENDING"}
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
    arn = await SfnExecutions(aws).start(endpoints.state_machine_arn, name, task)
    queues = SqsQueues(aws)
    [message] = await queues.receive(endpoints.control_queue_url, wait_s=10)
    await queues.delete(endpoints.control_queue_url, message.receipt_handle)
    return arn, json.loads(message.body)


async def test_success_is_delivered_once_and_a_repeat_is_already_done(
    aws: AwsContext, endpoints: Deployment
) -> None:
    executions = SfnExecutions(aws)
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
    beat = await executions.send_heartbeat(token)
    first = await executions.send_success(token, {"finished": True, "version": 5})
    execution = await finished(executions, arn)
    second = await executions.send_success(token, {"finished": True, "version": 5})
    late_beat = await executions.send_heartbeat(token)
    # THEN the first answers were delivered, the late ones are "already done", not errors
    assert (beat, first) == (True, True)
    assert (second, late_beat) == (False, False)
    assert execution.status == "SUCCEEDED"
    assert execution.output["task_result"] == {"finished": True, "version": 5}


async def test_failure_fails_the_execution_readably(aws: AwsContext, endpoints: Deployment) -> None:
    executions = SfnExecutions(aws)
    arn, message = await start_async_task(aws, endpoints, "broken")
    outcome = await executions.send_failure(message["task_token"], "ModelCorrupt", "x")
    execution = await finished(executions, arn)
    assert outcome is True
    assert (execution.status, execution.error) == ("FAILED", "TaskFailed")
    assert execution.cause == 'task "broken" failed with ModelCorrupt'


async def test_starting_the_same_execution_twice_returns_the_first(
    aws: AwsContext, endpoints: Deployment
) -> None:
    executions = SfnExecutions(aws)
    arn, message = await start_async_task(aws, endpoints, "twice")
    again = await executions.start(endpoints.state_machine_arn, "twice", {})
    assert again == arn
    await executions.send_success(message["task_token"], {"finished": True})


async def test_an_unknown_token_is_already_done(aws: AwsContext) -> None:
    assert await SfnExecutions(aws).send_heartbeat("no-such-token") is False


async def test_an_execution_is_found_watched_stopped_and_read_back(
    aws: AwsContext, endpoints: Deployment
) -> None:
    executions = SfnExecutions(aws)
    # GIVEN the stack's state machine, found by its name
    assert await executions.find_state_machine(endpoints.state_machine_name) == (
        endpoints.state_machine_arn
    )
    assert await executions.find_state_machine("no-such-machine") is None
    # WHEN a task starts THEN its ARN is the one the formula gives for its name
    arn, message = await start_async_task(aws, endpoints, "watched")
    machine = endpoints.require("state_machine_arn")
    assert (
        arn
        == execution_arn_for(machine, "watched")
        == (machine.replace(":stateMachine:", ":execution:") + ":watched")
    )
    assert await executions.status(arn) == "RUNNING"
    # AND its history holds the control message it sent, token and all
    sent = [body async for body in executions.sent_messages(arn)]
    assert message in sent
    # WHEN it is stopped THEN it ends (AWS says ABORTED; moto's engine, running the ASL,
    # reports the stop as FAILED); stopping one that never was is an answer
    assert await executions.stop(arn, error="Stopped", cause="by the test")
    assert (await finished(executions, arn)).status in ("ABORTED", "FAILED")
    assert await executions.status(execution_arn_for(machine, "never")) == "NONE"
    assert not await executions.stop(execution_arn_for(machine, "never"), "Stopped", "-")
    # AND a history Step Functions does not have is a clear error
    with pytest.raises(ExecutionNotFoundError, match="unknown to Step Functions"):
        [body async for body in executions.sent_messages(execution_arn_for(machine, "never"))]


# --- the contract both implementations keep (Step Functions on moto; in memory) ---------

Waiting = tuple[Executions, str, str, dict[str, Any]]  # port, machine, execution, message


@pytest.fixture
async def sfn_waiting(aws: AwsContext, endpoints: Deployment) -> Waiting:
    arn, message = await start_async_task(aws, endpoints, "shared")
    return SfnExecutions(aws), endpoints.require("state_machine_arn"), arn, message


@pytest.fixture(params=["stepfunctions", "memory"])
def waiting(request: pytest.FixtureRequest) -> Waiting:
    """An execution started and waiting on a task token, and the message its wait sent."""
    if request.param == "stepfunctions":
        found: Waiting = request.getfixturevalue("sfn_waiting")
        return found
    memory = MemoryExecutions()
    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:fedasync-fl-task"
    arn = asyncio.run(memory.start(machine, "shared", {"task_name": "shared"}))
    message = {"schema_version": 1, "kind": "open_task", "task_name": "shared",
               "task_token": "tok-1"}  # fmt: skip
    memory.wait(arn, message, "tok-1")
    return memory, machine, arn, message


async def test_a_token_is_answered_once_and_the_rest_are_already_done(waiting: Waiting) -> None:
    executions, _, _, message = waiting
    token = message["task_token"]
    # WHEN the wait is heartbeaten and answered
    beat = await executions.send_heartbeat(token)
    first = await executions.send_success(token, {"finished": True})
    # THEN both count, and the token is spent once the execution has taken the answer
    # (at once in memory; moto's engine takes a moment, AWS too)
    for _ in range(200):
        if not await executions.send_heartbeat(token):
            break
        await asyncio.sleep(0.05)
    # AND answering it again is "already done", not an error (a late SendTaskFailure is
    # too on AWS; moto 5 accepts it, so it is not part of what this test can hold)
    second = await executions.send_success(token, {"finished": True})
    assert (beat, first, second) == (True, True, False)
    assert await executions.send_heartbeat("no-such-token") is False


async def test_an_execution_is_named_found_and_read_back(waiting: Waiting) -> None:
    executions, machine, arn, message = waiting
    # THEN its ARN is the formula's, a second start of the name returns it, it runs
    assert arn == execution_arn_for(machine, "shared")
    assert await executions.start(machine, "shared", {"task_name": "shared"}) == arn
    assert await executions.status(arn) == "RUNNING"
    # AND its wait's message is in what it sent; an unknown execution is NONE, not stopped,
    # and has no history
    assert message in [body async for body in executions.sent_messages(arn)]
    never = execution_arn_for(machine, "never")
    assert await executions.status(never) == "NONE"
    assert not await executions.stop(never, "Stopped", "-")
    with pytest.raises(ExecutionNotFoundError, match="unknown to Step Functions"):
        [body async for body in executions.sent_messages(never)]
    await executions.send_success(message["task_token"], {"finished": True})
