"""Create, on the embedded endpoint, exactly the resources the CDK stack creates on AWS."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext
from fedasync.deployment import Deployment
from fedasync.local.principals import create_principals, stack_arns
from fedasync.resources import (
    ASL_PATH,
    CONTROL_VISIBILITY_S,
    TABLE_PARTITION_KEY,
    TABLE_SORT_KEY,
    TTL_ATTRIBUTE,
    notice_filter_policy,
    shard_topic,
    substitute_asl,
    topic_shard,
)

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger()

# The same values as infra/ (messaging.py); the control queue's comes from
# fedasync.resources, shared with infra/server.py, so neither side can drift.
CLIENT_VISIBILITY_S = 5 * 60
MAX_RECEIVE_COUNT = 5
DLQ_RETENTION_S = 14 * 24 * 3600
# moto checks only the shape of a role ARN; real stacks get theirs from CDK. Its name is
# the state machine principal's user name (fedasync.local.principals.user_name): moto's
# engine signs the state machine's calls with that user's key.
_LOCAL_ROLE_ARN = "arn:aws:iam::123456789012:role/{prefix}-state-machine"


async def provision(aws: AwsContext, spec: Deployment) -> Deployment:
    """Create every resource of `spec`; running it again finds and reuses them. Returns
    `spec` with what only the running stack knows (ARNs, URLs, the principals' keys)."""
    bucket = await _bucket(aws, spec)
    table, stream_arn = await _table(aws, spec)
    server_table = await _server_table(aws, spec)
    sqs = await aws.sqs()
    control_dlq = await _queue(sqs, spec.control_dlq_name, retention_s=DLQ_RETENTION_S)
    control = await _queue(sqs, spec.control_queue_name, CONTROL_VISIBILITY_S, control_dlq)
    failures = await _queue(sqs, spec.aggregate_failures_name, retention_s=DLQ_RETENTION_S)
    shards = spec.topic_shards
    sns = await aws.sns()
    topics = [
        (await sns.create_topic(Name=shard_topic(spec.topic_name, i)))["TopicArn"]
        for i in range(shards)
    ]
    subscribed = {topic: await _subscriptions(aws, topic) for topic in topics}
    client_urls: dict[str, str] = {}
    dlq_urls: dict[str, str] = {}
    for client_id in spec.client_ids:
        dlq_urls[client_id] = await _queue(
            sqs, spec.client_dlq_name(client_id), retention_s=DLQ_RETENTION_S
        )
        client_urls[client_id] = await _queue(
            sqs, spec.client_queue_name(client_id), CLIENT_VISIBILITY_S, dlq_urls[client_id]
        )
        await _subscribe(aws, topics, subscribed, client_urls[client_id], client_id)
    machine_arn = await _state_machine(aws, spec, server_table, control)
    principals = await create_principals(aws, spec, stack_arns(spec, stream_arn))
    endpoints = spec.model_copy(
        update=dict(
            endpoint_url=aws.endpoint_url,
            region=aws.region,
            bucket=bucket,
            table=table,
            server_table=server_table,
            stream_arn=stream_arn,
            topic_arn=topics[0],
            topic_shards=shards,
            control_queue_url=control,
            control_dlq_url=control_dlq,
            aggregate_failures_url=failures,
            client_queue_urls=client_urls,
            client_dlq_urls=dlq_urls,
            state_machine_arn=machine_arn,
            principals=principals,
        )
    )
    log.info("stack.provisioned", prefix=spec.prefix, clients=len(spec.clients))
    return endpoints


async def _bucket(aws: AwsContext, spec: Deployment) -> str:
    s3 = await aws.s3()
    try:
        if aws.region == "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            await s3.create_bucket(Bucket=spec.bucket)
        else:
            await s3.create_bucket(
                Bucket=spec.bucket,
                CreateBucketConfiguration={"LocationConstraint": aws.region},  # type: ignore[typeddict-item]
            )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    return spec.bucket


async def _create_table(aws: AwsContext, name: str, *, stream: bool) -> None:
    ddb = await aws.dynamodb()
    try:
        await ddb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": TABLE_PARTITION_KEY, "KeyType": "HASH"},
                {"AttributeName": TABLE_SORT_KEY, "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": TABLE_PARTITION_KEY, "AttributeType": "S"},
                {"AttributeName": TABLE_SORT_KEY, "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
            if stream
            else {"StreamEnabled": False},
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise


async def _server_table(aws: AwsContext, spec: Deployment) -> str:
    await _create_table(aws, spec.server_table, stream=False)  # nothing reacts to it
    return spec.server_table


async def _table(aws: AwsContext, spec: Deployment) -> tuple[str, str]:
    """The inbox (what silos write), streamed to the aggregate function."""
    ddb = await aws.dynamodb()
    await _create_table(aws, spec.table, stream=True)
    ttl = await ddb.describe_time_to_live(TableName=spec.table)
    if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") != "ENABLED":
        await ddb.update_time_to_live(
            TableName=spec.table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
    described = await ddb.describe_table(TableName=spec.table)
    return spec.table, described["Table"]["LatestStreamArn"]


async def _queue_arn(sqs: SQSClient, url: str) -> str:
    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attrs["Attributes"]["QueueArn"]


async def _queue(
    sqs: SQSClient,
    name: str,
    visibility_s: int | None = None,
    dlq_url: str | None = None,
    *,
    retention_s: int | None = None,
) -> str:
    attributes: dict[str, str] = {}
    if retention_s is not None:
        attributes["MessageRetentionPeriod"] = str(retention_s)
    if visibility_s is not None:
        attributes["VisibilityTimeout"] = str(visibility_s)
    if dlq_url is not None:
        redrive = {
            "deadLetterTargetArn": await _queue_arn(sqs, dlq_url),
            "maxReceiveCount": MAX_RECEIVE_COUNT,
        }
        attributes["RedrivePolicy"] = json.dumps(redrive)
    response = await sqs.create_queue(QueueName=name, Attributes=attributes)  # type: ignore[arg-type]
    return response["QueueUrl"]


async def _subscriptions(aws: AwsContext, topic_arn: str) -> dict[str, str]:
    """A topic's subscriptions, endpoint -> subscription ARN (every page)."""
    sns = await aws.sns()
    found: dict[str, str] = {}
    token: str | None = None
    while True:
        page = await sns.list_subscriptions_by_topic(
            TopicArn=topic_arn, **({"NextToken": token} if token else {})
        )
        for sub in page.get("Subscriptions", []):
            found[sub["Endpoint"]] = sub["SubscriptionArn"]
        token = page.get("NextToken")
        if not token:
            return found


async def _subscribe(
    aws: AwsContext,
    topics: list[str],
    subscribed: dict[str, dict[str, str]],
    queue_url: str,
    client_id: str,
) -> None:
    """Subscribe the client's queue to its own shard, and to no other (a stack
    re-provisioned with more clients may have more shards: its queue moves)."""
    sns = await aws.sns()
    queue_arn = await _queue_arn(await aws.sqs(), queue_url)
    own = topics[topic_shard(client_id, len(topics))]
    for topic in topics:
        if topic != own and queue_arn in subscribed[topic]:
            await sns.unsubscribe(SubscriptionArn=subscribed[topic].pop(queue_arn))
    if queue_arn in subscribed[own]:
        return  # re-provisioning must not double every notice
    response = await sns.subscribe(
        TopicArn=own,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicy": json.dumps(notice_filter_policy(client_id)),
        },
        ReturnSubscriptionArn=True,
    )
    subscribed[own][queue_arn] = response["SubscriptionArn"]


async def _state_machine(aws: AwsContext, spec: Deployment, table: str, control_url: str) -> str:
    sfn = await aws.sfn()
    definition = substitute_asl(
        ASL_PATH.read_text(), {"ServerTableName": table, "ControlQueueUrl": control_url}
    )
    machines = await sfn.list_state_machines()
    for machine in machines["stateMachines"]:
        if machine["name"] == spec.state_machine_name:
            await sfn.update_state_machine(
                stateMachineArn=machine["stateMachineArn"], definition=definition
            )
            return machine["stateMachineArn"]
    created = await sfn.create_state_machine(
        name=spec.state_machine_name,
        definition=definition,
        roleArn=_LOCAL_ROLE_ARN.format(prefix=spec.prefix),
        type="STANDARD",
    )
    return created["stateMachineArn"]
