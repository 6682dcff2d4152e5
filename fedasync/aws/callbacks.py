"""Step Functions port: start and watch executions, answer wait-for-token states.

A callback that arrives after its state has moved on (timed out, caught, execution
over) is a normal event under at-least-once delivery, not a crash: it is reported as
`CallbackOutcome.ALREADY_DONE`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code

log = structlog.get_logger()

# InvalidToken is what moto answers for a late token; AWS says TaskTimedOut, and
# TaskDoesNotExist once the execution is gone.
_LATE_CODES = frozenset({"InvalidToken", "TaskTimedOut", "TaskDoesNotExist"})


class CallbackOutcome(StrEnum):
    DELIVERED = "delivered"
    ALREADY_DONE = "already_done"


@dataclass(frozen=True)
class Execution:
    execution_arn: str
    status: str  # RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    output: Any = None
    error: str | None = None
    cause: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"


class Callbacks(Protocol):
    async def start_execution(
        self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]
    ) -> str: ...

    async def describe_execution(self, execution_arn: str) -> Execution: ...

    async def send_task_success(
        self, task_token: str, output: Mapping[str, Any]
    ) -> CallbackOutcome: ...

    async def send_task_failure(
        self, task_token: str, error: str, cause: str
    ) -> CallbackOutcome: ...

    async def send_task_heartbeat(self, task_token: str) -> CallbackOutcome: ...


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    """The ARN Step Functions gives the execution `name` of a state machine."""
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"


class SfnCallbacks:
    """`Callbacks` over aioboto3's Step Functions client."""

    def __init__(self, aws: AwsContext) -> None:
        self._aws = aws

    async def start_execution(
        self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]
    ) -> str:
        """Start `name` (always named: moto names an unnamed execution 'None', so the
        second one collides); starting it again returns the existing execution."""
        sfn = await self._aws.sfn()
        try:
            started = await sfn.start_execution(
                stateMachineArn=state_machine_arn, name=name, input=json.dumps(dict(task_input))
            )
        except ClientError as error:
            if error_code(error) != "ExecutionAlreadyExists":
                raise
            log.info("execution.already_started", name=name)
            return execution_arn_for(state_machine_arn, name)
        return started["executionArn"]

    async def describe_execution(self, execution_arn: str) -> Execution:
        sfn = await self._aws.sfn()
        described = await sfn.describe_execution(executionArn=execution_arn)
        raw_output = described.get("output")
        return Execution(
            execution_arn=execution_arn,
            status=described["status"],
            output=json.loads(raw_output) if raw_output else None,
            error=described.get("error"),
            cause=described.get("cause"),
        )

    async def send_task_success(
        self, task_token: str, output: Mapping[str, Any]
    ) -> CallbackOutcome:
        sfn = await self._aws.sfn()
        return await self._answer(
            "success", sfn.send_task_success(taskToken=task_token, output=json.dumps(dict(output)))
        )

    async def send_task_failure(self, task_token: str, error: str, cause: str) -> CallbackOutcome:
        # moto drops `cause`; the ASL reports readable failures through success payloads
        sfn = await self._aws.sfn()
        return await self._answer(
            "failure", sfn.send_task_failure(taskToken=task_token, error=error, cause=cause)
        )

    async def send_task_heartbeat(self, task_token: str) -> CallbackOutcome:
        sfn = await self._aws.sfn()
        return await self._answer("heartbeat", sfn.send_task_heartbeat(taskToken=task_token))

    @staticmethod
    async def _answer(kind: str, call: Any) -> CallbackOutcome:
        try:
            await call
        except ClientError as error:
            if error_code(error) not in _LATE_CODES:
                raise
            log.info("callback.already_done", callback=kind, code=error_code(error))
            return CallbackOutcome.ALREADY_DONE
        return CallbackOutcome.DELIVERED
