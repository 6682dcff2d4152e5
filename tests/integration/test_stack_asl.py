"""The real ASL (stepfunctions/fl_task.asl.json) run end to end by moto's Step Functions.

A scripted control handler, fed by the embedded stack's control-queue pump, stands in
for the server's control Lambda: it records each control message and answers (or not).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import boto3

from fedasync.aws.executions import SfnExecutions
from fedasync.aws.session import principal_credentials
from fedasync.deployment import Deployment
from fedasync.local.server import LocalMotoServer
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ENV_ENDPOINT_URL, ENV_REGION

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


class ScriptedControl:
    """A Lambda-style control handler: SendTaskSuccess with whatever `answer` returns."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        # as the control function's role, which the pump runs this handler as
        credentials = principal_credentials.get()
        sfn = boto3.client(
            "stepfunctions",
            endpoint_url=os.environ[ENV_ENDPOINT_URL],
            region_name=os.environ[ENV_REGION],
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
        )
        for record in event["Records"]:
            body = json.loads(record["body"])
            with self._lock:
                self.messages.append(body)
            output = self._answer(body)
            if output is not None:
                sfn.send_task_success(taskToken=body["task_token"], output=json.dumps(output))
        return {"batchItemFailures": []}

    def kinds(self) -> list[tuple[str, Any]]:
        with self._lock:
            return [(m["kind"], m.get("round_id", m.get("reason"))) for m in self.messages]

    def token(self, kind: str) -> str | None:
        with self._lock:
            return next((m["task_token"] for m in self.messages if m["kind"] == kind), None)


def task_input(name: str, mode: str, **overrides: Any) -> dict[str, Any]:
    task = {
        "task_name": name,
        "start_round": 0,
        "mode": mode,
        "rounds": 2,
        "min_clients": 2,
        "round_timeout_s": 2,
        "heartbeat_s": 2,
        "deadline_s": 30,
    }
    task |= overrides
    # one check per round unless a test asks for more (TaskConfig.round_clock)
    return {"round_check_s": task["round_timeout_s"], "round_ticks": 1, **task}


async def start(stack: EmbeddedStack, task: dict[str, Any], *, write_item: bool = True) -> str:
    ddb = await stack.aws.dynamodb()
    if write_item:  # the task starter writes the TASK item before StartExecution
        await ddb.put_item(
            TableName=stack.endpoints.server_table,
            Item={
                "task_name": {"S": task["task_name"]},
                "sk": {"S": "TASK"},
                "status": {"S": "PENDING"},
            },
        )
    sfn = await stack.aws.sfn()
    started = await sfn.start_execution(
        stateMachineArn=stack.endpoints.state_machine_arn,
        name=task["task_name"],
        input=json.dumps(task),
    )
    return started["executionArn"]


async def finished(stack: EmbeddedStack, execution_arn: str, timeout_s: float = 20) -> Any:
    sfn = await stack.aws.sfn()
    async with asyncio.timeout(timeout_s):
        while True:
            described = await sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            await asyncio.sleep(0.05)


async def task_item(stack: EmbeddedStack, name: str) -> dict[str, Any]:
    ddb = await stack.aws.dynamodb()
    got = await ddb.get_item(
        TableName=stack.endpoints.server_table,
        Key={"task_name": {"S": name}, "sk": {"S": "TASK"}},
    )
    return {k: next(iter(v.values())) for k, v in got["Item"].items()}


def embedded(moto_server: LocalMotoServer, prefix: str, control: ScriptedControl) -> EmbeddedStack:
    return EmbeddedStack(
        Deployment(prefix=prefix),
        endpoint_url=moto_server.endpoint_url,
        aggregate_handler=None,
        control_handler=control,
    )


async def test_two_round_sync_task_succeeds(moto_server: LocalMotoServer, prefix: str) -> None:
    # GIVEN a control handler that closes every round as soon as it opens
    control = ScriptedControl(lambda m: {"closed": True, "round_id": m["round_id"]})
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN a 2-round sync task runs
        arn = await start(stack, task_input("digits", "sync", rounds=2))
        result = await finished(stack, arn)
        # THEN rounds 0 and 1 were opened in order, the execution SUCCEEDED and it is recorded
        assert result["status"] == "SUCCEEDED"
        assert control.kinds() == [("open_round", 0), ("open_round", 1)]
        assert json.loads(result["output"])["round_id"] == 2
        item = await task_item(stack, "digits")
        assert item["status"] == "SUCCEEDED"
        assert item["execution_arn"] == arn


async def test_unanswered_round_closes_and_fails_with_readable_cause(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN a round that never completes (1 update of the 2 needed) and a handler that
    # reports the missed quorum when asked to close it
    cause = (
        "round 0 of task 'digits' closed at its deadline with 1 update(s); 2 needed (min_clients)"
    )

    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["kind"] == "close_round":
            return {"closed": False, "arrived": 1, "needed": 2, "cause": cause}
        return None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN the round's timeout (2 s) passes
        arn = await start(stack, task_input("digits", "sync", round_timeout_s=2))
        result = await finished(stack, arn)
        # THEN CloseRound was sent, and the execution and the TASK item say why it failed
        assert control.kinds() == [("open_round", 0), ("close_round", 0)]
        assert (result["status"], result["error"], result["cause"]) == (
            "FAILED",
            "QuorumMissed",
            cause,
        )
        item = await task_item(stack, "digits")
        assert (item["status"], item["error"], item["cause"]) == ("FAILED", "QuorumMissed", cause)


async def test_round_closed_at_timeout_with_quorum_moves_on(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN rounds that only close when the timeout asks (the quorum was met by then)
    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        return {"closed": True} if message["kind"] == "close_round" else None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN a 1-round task with a 1 s round timeout runs
        arn = await start(stack, task_input("late", "sync", rounds=1, round_timeout_s=1))
        result = await finished(stack, arn)
        # THEN the task succeeds after CloseRound
        assert control.kinds() == [("open_round", 0), ("close_round", 0)]
        assert result["status"] == "SUCCEEDED"


async def test_a_round_wait_is_cut_into_checks_before_its_deadline(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN rounds that nobody closes before the deadline asks (checks go unanswered)
    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        return {"closed": True} if message["kind"] == "close_round" else None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN a 1-round task waits 3 checks of 1 s
        task = task_input("ticks", "sync", rounds=1, round_timeout_s=3)
        arn = await start(stack, {**task, "round_check_s": 1, "round_ticks": 3})
        result = await finished(stack, arn)
        # THEN the server was asked to check the round twice (each with a fresh token),
        # then to close it at the deadline, and the task succeeded
        assert control.kinds() == [
            ("open_round", 0),
            ("check_round", 0),
            ("check_round", 0),
            ("close_round", 0),
        ]
        assert len({m["task_token"] for m in control.messages}) == 4
        assert result["status"] == "SUCCEEDED"


async def test_a_check_may_close_the_round_early(moto_server: LocalMotoServer, prefix: str) -> None:
    # GIVEN a server that closes round 0 at its first check (its dead silos dropped)
    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        return {"closed": True} if message["kind"] in ("check_round", "close_round") else None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN a 2-round task cut into 1 s checks of a 30 s deadline runs
        task = task_input("early", "sync", rounds=2, round_timeout_s=30)
        arn = await start(stack, {**task, "round_check_s": 1, "round_ticks": 30})
        result = await finished(stack, arn, timeout_s=20)
        # THEN each round closed at its first check, well before its deadline
        assert control.kinds() == [
            ("open_round", 0),
            ("check_round", 0),
            ("open_round", 1),
            ("check_round", 1),
        ]
        assert result["status"] == "SUCCEEDED"


async def test_async_task_without_heartbeat_is_finalized(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN an async task whose aggregator never heartbeats, and a handler that answers
    # finalize after writing the final model
    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["kind"] == "finalize":
            return {"finished": True, "version": 0, "reason": message["reason"]}
        return None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN the heartbeat window (1 s) passes
        arn = await start(stack, task_input("quiet", "async", heartbeat_s=1, deadline_s=30))
        result = await finished(stack, arn)
        # THEN Finalize ran (reason: timeout on moto, idle on AWS) and the task SUCCEEDED
        assert [k for k, _ in control.kinds()] == ["open_task", "finalize"]
        assert control.kinds()[1][1] in {"timeout", "idle"}
        assert result["status"] == "SUCCEEDED"
        assert (await task_item(stack, "quiet"))["status"] == "SUCCEEDED"


async def test_heartbeats_keep_async_task_open_until_the_aggregator_stops_it(
    moto_server: LocalMotoServer, prefix: str, wait_until: Any
) -> None:
    # GIVEN an async task with a 1 s heartbeat window
    control = ScriptedControl(lambda m: None)
    async with embedded(moto_server, prefix, control) as stack:
        arn = await start(stack, task_input("busy", "async", heartbeat_s=1, deadline_s=30))
        token = await wait_until(lambda: control.token("open_task"))
        callbacks = SfnExecutions(stack.aws)
        # WHEN the aggregator heartbeats every 0.3 s for 2.4 s, then reaches its stop
        beats = []
        for _ in range(8):
            beats.append(await callbacks.send_heartbeat(token))
            await asyncio.sleep(0.3)
        still = await callbacks.describe(arn)
        await callbacks.send_success(
            token, {"finished": True, "version": 12, "reason": "max_versions"}
        )
        result = await finished(stack, arn)
        # THEN the task was still open after 2.4 s, never finalized, and SUCCEEDED
        assert set(beats) == {True}
        assert still.running
        assert control.kinds() == [("open_task", None)]
        assert result["status"] == "SUCCEEDED"
        assert json.loads(result["output"])["task_result"]["version"] == 12


async def test_async_deadline_finalizes_even_while_heartbeating(
    moto_server: LocalMotoServer, prefix: str, wait_until: Any
) -> None:
    # GIVEN an async task with a 2 s deadline and an aggregator that keeps heartbeating
    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["kind"] == "finalize":
            return {"finished": True, "version": 3, "reason": message["reason"]}
        return None

    control = ScriptedControl(answer)
    async with embedded(moto_server, prefix, control) as stack:
        arn = await start(stack, task_input("deadline", "async", heartbeat_s=1, deadline_s=2))
        token = await wait_until(lambda: control.token("open_task"))
        callbacks = SfnExecutions(stack.aws)
        # WHEN the deadline passes while heartbeats keep coming
        while await callbacks.send_heartbeat(token) is True:
            await asyncio.sleep(0.2)
        result = await finished(stack, arn)
        # THEN Finalize ran with reason "timeout" and the task SUCCEEDED
        assert control.kinds() == [("open_task", None), ("finalize", "timeout")]
        assert result["status"] == "SUCCEEDED"


async def test_task_without_its_item_fails_readably(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN no TASK item in the table
    control = ScriptedControl(lambda m: None)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN an execution starts for it
        arn = await start(stack, task_input("ghost", "sync"), write_item=False)
        result = await finished(stack, arn)
        # THEN it fails before any control message, naming the task
        assert (result["status"], result["error"]) == ("FAILED", "TaskNotFound")
        assert '"ghost"' in result["cause"]
        assert control.messages == []


async def test_unknown_mode_fails_and_is_recorded(
    moto_server: LocalMotoServer, prefix: str
) -> None:
    # GIVEN a task whose mode is neither sync nor async
    control = ScriptedControl(lambda m: None)
    async with embedded(moto_server, prefix, control) as stack:
        # WHEN it starts
        arn = await start(stack, task_input("odd", "semi"))
        result = await finished(stack, arn)
        # THEN it FAILED with a cause naming the mode, also written on the TASK item
        expected = 'task "odd" has mode "semi"; expected sync or async'
        assert (result["status"], result["error"], result["cause"]) == (
            "FAILED",
            "InvalidMode",
            expected,
        )
        assert (await task_item(stack, "odd"))["cause"] == expected
