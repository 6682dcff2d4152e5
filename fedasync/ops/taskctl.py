"""Operator commands on a running deployment: start and resume a task.

Every function returns plain data (JSON-able dicts); the CLI only renders it. Where the
task's resources are is `fedasync.ops.tasklookup`'s; `status` is in
`fedasync.ops.taskstatus`, `stop` in `fedasync.ops.taskstop`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from fedasync.aws.queues import SqsQueues
from fedasync.aws.session import AwsContext
from fedasync.core.codec import Array
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.deployment import Deployment
from fedasync.ops.tasklookup import state_machine_arn
from fedasync.server.store import ServerStore
from fedasync.server.tasks import resume_task, start_task

log = structlog.get_logger()


async def clients_without_queue(aws: AwsContext, stack: Deployment, cfg: TaskConfig) -> list[str]:
    """The task's clients that have no queue in the deployed stack (their notices would go
    nowhere, and their rounds could never fill): from the stack config's queue list when it
    has one, else by asking SQS for each client's queue by name."""
    if stack.client_queue_urls:
        return [c for c in cfg.clients if c not in stack.client_queue_urls]
    queues = SqsQueues(aws)

    async def missing(client_id: str) -> bool:
        return await queues.url_of(stack.client_queue_name(client_id)) is None

    found = await asyncio.gather(*(missing(c) for c in cfg.clients))
    return [c for c, gone in zip(cfg.clients, found, strict=True) if gone]


async def start(
    aws: AwsContext, stack: Deployment, cfg: TaskConfig, initial: dict[str, Array]
) -> dict[str, Any]:
    """Create the task and start its execution; the same config again returns the same ARN.
    Refused (`ConfigError`, nothing created) if a client of the task has no queue."""
    unknown = await clients_without_queue(aws, stack, cfg)
    if unknown:
        raise ConfigError(
            f"task {cfg.task_name!r} names client(s) with no queue in stack "
            f"{stack.prefix!r}: {', '.join(unknown)}; add them to the stack's clients "
            "(infra/clients.yaml and `cdk deploy`, or `fedasync local up --clients`)"
        )
    machine = await state_machine_arn(aws, stack)
    arn = await start_task(ServerStore(aws, stack), machine, cfg, initial)
    log.info("task.started", task_name=cfg.task_name, execution_arn=arn)
    return {"task_name": cfg.task_name, "mode": cfg.mode, "execution_arn": arn}


async def resume(aws: AwsContext, stack: Deployment, task_name: str) -> dict[str, Any]:
    """Start the task's next attempt (see `fedasync.server.tasks.resume_task`)."""
    out = await resume_task(ServerStore(aws, stack), await state_machine_arn(aws, stack), task_name)
    log.info("task.resumed", task_name=task_name, attempt=out["attempt"])
    return out


__all__ = ["clients_without_queue", "resume", "start"]
