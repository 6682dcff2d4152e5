"""What the operator's commands share: the stack options, `error: ...` and exit 1, and
running one operation on the resolved stack (`fedasync.ops`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from botocore.exceptions import BotoCoreError, ClientError

from fedasync.aws.session import AwsContext, refusal_message
from fedasync.core.errors import FedAsyncError
from fedasync.deployment import Deployment
from fedasync.ops.tasklookup import resolve_stack
from fedasync.resources import ENV_ENDPOINT_URL

T = TypeVar("T")

Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint", envvar=ENV_ENDPOINT_URL, help="AWS endpoint URL; default: real AWS."
    ),
]
Prefix = Annotated[
    str, typer.Option(envvar="FEDASYNC_PREFIX", help="Stack prefix naming the resources.")
]
Region = Annotated[str | None, typer.Option(envvar="AWS_DEFAULT_REGION", help="AWS region.")]
StackJson = Annotated[
    Path | None,
    typer.Option(
        "--stack-config",
        envvar="FEDASYNC_STACK_CONFIG",
        help="JSON of resolved resource names (CDK outputs, or what `local up` wrote); "
        "overrides the names derived from --prefix.",
    ),
]
TaskName = Annotated[str, typer.Argument(help="The task's name (task_name in its config).")]


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def run(stack: Deployment, work: Callable[[AwsContext], Awaitable[T]]) -> T:
    """Run one operation on an `AwsContext`; known failures become `error:` and exit 1."""

    async def main() -> T:
        async with AwsContext(
            stack.endpoint_url, stack.region, stack.credentials("operator")
        ) as aws:
            return await work(aws)

    try:
        return asyncio.run(main())
    except FedAsyncError as exc:
        raise fail(exc.message) from exc
    except ClientError as exc:
        raise fail(
            refusal_message(exc, "operator" if stack.credentials("operator") else None)
        ) from exc
    except BotoCoreError as exc:
        where = stack.endpoint_url or f"AWS ({stack.region})"
        raise fail(f"cannot reach {where}: {exc}") from exc


def resolve(
    endpoint: str | None, prefix: str, region: str | None, stack_config: Path | None
) -> Deployment:
    try:
        return resolve_stack(
            endpoint_url=endpoint, prefix=prefix, region=region, stack_config=stack_config
        )
    except FedAsyncError as exc:
        raise fail(exc.message) from exc
