"""Step Functions port: start, watch and stop executions; answer wait-for-token states.

A callback for a token already spent (its state timed out, was caught, or the execution
is over) is work already done under at-least-once delivery, not an error: the answer is
`False`. An execution's history is read back as the record of what it sent, which no
one but the execution can have written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code
from fedasync.core.errors import RegistryError

log = structlog.get_logger()

# InvalidToken is what moto answers for a late token; AWS says TaskTimedOut, and
# TaskDoesNotExist once the execution is gone.
SPENT_TOKEN_ERRORS = frozenset({"InvalidToken", "TaskTimedOut", "TaskDoesNotExist"})
NO_EXECUTION_ERRORS = frozenset({"ExecutionDoesNotExist", "InvalidArn"})


class ExecutionNotFoundError(RegistryError):
    """The execution a task records is not one Step Functions knows."""

    reason = "no_execution"


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    """The ARN Step Functions gives the execution `name` of a state machine (`*`: all of
    its executions, as a policy names them)."""
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"


@dataclass(frozen=True)
class Execution:
    execution_arn: str
    status: str  # RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    output: Any = None
    error: str | None = None
    cause: str | None = None
    started: datetime | None = None
    stopped: datetime | None = None

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"


class Executions(Protocol):
    async def start(
        self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]
    ) -> str: ...
    async def describe(self, execution_arn: str) -> Execution: ...
    async def status(self, execution_arn: str) -> str: ...
    async def stop(self, execution_arn: str, error: str, cause: str) -> bool: ...
    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool: ...
    async def send_failure(self, token: str, error: str, cause: str) -> bool: ...
    async def send_heartbeat(self, token: str) -> bool: ...
    def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]: ...
    async def find_state_machine(self, name: str) -> str | None: ...


class SfnExecutions:
    """`Executions` over aioboto3's Step Functions client."""

    def __init__(self, aws: AwsContext) -> None:
        self._aws = aws

    async def start(self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]) -> str:
        """Start `name` (always named: moto names an unnamed execution 'None', so the
        second one collides); the same name again returns that execution's ARN."""
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
        return str(started["executionArn"])

    async def describe(self, execution_arn: str) -> Execution:
        sfn = await self._aws.sfn()
        described = await sfn.describe_execution(executionArn=execution_arn)
        raw_output = described.get("output")
        return Execution(
            execution_arn=execution_arn,
            status=described["status"],
            output=json.loads(raw_output) if raw_output else None,
            error=described.get("error"),
            cause=described.get("cause"),
            started=described.get("startDate"),
            stopped=described.get("stopDate"),
        )

    async def status(self, execution_arn: str) -> str:
        """The execution's status; "NONE" if Step Functions has no such execution."""
        try:
            return (await self.describe(execution_arn)).status
        except ClientError as error:
            if error_code(error) in NO_EXECUTION_ERRORS:
                return "NONE"
            raise

    async def stop(self, execution_arn: str, error: str, cause: str) -> bool:
        """StopExecution; False if there is no such execution."""
        sfn = await self._aws.sfn()
        try:
            await sfn.stop_execution(executionArn=execution_arn, error=error, cause=cause)
        except ClientError as exc:
            if error_code(exc) != "ExecutionDoesNotExist":
                raise
            return False
        return True

    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool:
        """True if this call completed the wait; False if the token was already spent."""
        sfn = await self._aws.sfn()
        return await _answer(sfn.send_task_success(taskToken=token, output=json.dumps(output)))

    async def send_failure(self, token: str, error: str, cause: str) -> bool:
        # moto drops `cause`; the ASL reports readable failures through success payloads
        sfn = await self._aws.sfn()
        return await _answer(sfn.send_task_failure(taskToken=token, error=error, cause=cause))

    async def send_heartbeat(self, token: str) -> bool:
        sfn = await self._aws.sfn()
        return await _answer(sfn.send_task_heartbeat(taskToken=token))

    async def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]:
        """The message bodies the execution's SQS tasks sent, newest first (as the service
        orders them; moto gives oldest first), read from its history: what Step Functions
        itself recorded, so nobody but the execution can have put one there. A history
        the service does not have raises `ExecutionNotFoundError`."""
        sfn = await self._aws.sfn()
        kwargs: dict[str, Any] = {
            "executionArn": execution_arn,
            "reverseOrder": True,
            "maxResults": 1000,
        }
        while True:
            try:
                page = await sfn.get_execution_history(**kwargs)
            except ClientError as exc:
                if error_code(exc) in NO_EXECUTION_ERRORS:
                    raise ExecutionNotFoundError(
                        f"execution {execution_arn!r} is unknown to Step Functions"
                    ) from exc
                raise
            for event in page.get("events", []):
                body = _message_body(event.get("taskScheduledEventDetails") or {})
                if body is not None:
                    yield body
            if not page.get("nextToken"):
                return
            kwargs["nextToken"] = page["nextToken"]

    async def find_state_machine(self, name: str) -> str | None:
        """The ARN of the state machine named `name`, if this account has one."""
        sfn = await self._aws.sfn()
        async for page in sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                if machine["name"] == name:
                    return machine["stateMachineArn"]
        return None


async def _answer(call: Any) -> bool:
    try:
        await call
    except ClientError as error:
        if error_code(error) not in SPENT_TOKEN_ERRORS:
            raise
        log.info("callback.already_done", code=error_code(error))
        return False
    return True


def _message_body(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `MessageBody` of a scheduled `sqs:sendMessage*` task (an object in the ASL; the
    service may render it as JSON text), else None."""
    if details.get("resourceType") != "sqs":
        return None
    try:
        body = json.loads(str(details.get("parameters") or "{}")).get("MessageBody")
        if isinstance(body, str):
            body = json.loads(body)
    except (ValueError, AttributeError):
        return None
    return body if isinstance(body, dict) else None
