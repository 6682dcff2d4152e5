"""Finding a task's resources on a running deployment, for the operator commands.

The same code reaches the embedded stack and AWS; only `Deployment.endpoint_url` and
the credentials differ. Resource names come from `Deployment(prefix)` (what the embedded
stack creates) unless a stack config JSON names them (a CDK deployment, whose bucket
CloudFormation names; `fedasync local up` writes one too). The state machine is found
by name with `ListStateMachines` when the JSON does not give its ARN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fedasync.aws.executions import SfnExecutions
from fedasync.aws.notices import find_topics
from fedasync.aws.session import AwsContext
from fedasync.core.errors import ConfigError, TaskNotFoundError
from fedasync.core.items.task import TaskItem
from fedasync.deployment import Deployment
from fedasync.resources import TABLE_PARTITION_KEY
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView
from fedasync.server.tasks import attempt_execution_name, current_execution_arn


def resolve_stack(
    *, endpoint_url: str | None, prefix: str, region: str | None, stack_config: Path | None
) -> Deployment:
    """Names from the stack JSON if given, else derived from the prefix."""
    if stack_config is not None:
        return Deployment.load(stack_config, endpoint_url, region)
    return Deployment(prefix=prefix, endpoint_url=endpoint_url, region=region or "us-east-1")


async def state_machine_arn(aws: AwsContext, stack: Deployment) -> str:
    if stack.state_machine_arn:
        return stack.state_machine_arn
    name = stack.state_machine_name
    found = await SfnExecutions(aws).find_state_machine(name)
    if found is not None:
        return found
    raise ConfigError(
        f"no state machine named {name!r} at {stack.endpoint_url or 'AWS'} "
        f"(region {stack.region}); is the stack with prefix {stack.prefix!r} up?"
    )


async def notice_topics(aws: AwsContext, stack: Deployment) -> tuple[str, int]:
    """Shard 0's topic ARN and the number of shards: from the stack config, else found
    among the account's topics by name (`{prefix}-global-model-ready` and its `-{i}`)."""
    if stack.topic_arn and "topic_shards" in stack.model_fields_set:
        return stack.topic_arn, stack.topic_shards
    name = stack.topic_name
    found = await find_topics(aws, name)
    if 0 not in found:
        raise ConfigError(
            f"no topic named {name!r} at {stack.endpoint_url or 'AWS'} "
            f"(region {stack.region}); is the stack with prefix {stack.prefix!r} up?"
        )
    return stack.topic_arn or found[0], max(found) + 1


async def execution_arn(aws: AwsContext, stack: Deployment, item: dict[str, Any]) -> str:
    """The execution of the task's current attempt: the one the TASK item records, unless a
    resume has started a newer attempt that has not recorded itself yet."""
    recorded = TaskItem.from_item(str(item.get(TABLE_PARTITION_KEY)), item).execution_arn or ""
    if recorded.endswith(f":{attempt_execution_name(item)}"):
        return recorded
    return current_execution_arn(await state_machine_arn(aws, stack), item)


async def task_view(store: ServerStore, task_name: str) -> TaskView:
    return TaskView.from_item(task_name, await store.get_task(task_name))


async def task_item(store: ServerStore, task_name: str) -> tuple[dict[str, Any], TaskView]:
    """The TASK item and its view; `TaskNotFoundError` names the task when it is absent."""
    item = await store.get_task(task_name)
    if item is None:
        raise TaskNotFoundError(f"task {task_name!r} does not exist in table {store.where.table!r}")
    return item, TaskView.from_item(task_name, item)


async def describe_execution(aws: AwsContext, arn: str) -> dict[str, Any]:
    try:
        desc = await SfnExecutions(aws).describe(arn)
    except ClientError as exc:
        return {"arn": arn, "status": "UNKNOWN", "error": str(exc)}
    return {
        "arn": arn,
        "status": desc.status,
        "started": desc.started.isoformat() if desc.started else None,
        "stopped": desc.stopped.isoformat() if desc.stopped else None,
        "error": desc.error,
        "cause": desc.cause,
    }
