"""Provisioning creates the CDK stack's resources on moto, idempotently."""

from __future__ import annotations

import json
import os

from fedasync.aws.session import AwsContext
from fedasync.deployment import Deployment
from fedasync.local.provision import provision
from fedasync.local.server import LocalMotoServer
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import (
    ENV_CONTROL_QUEUE_URL,
    ENV_ENDPOINT_URL,
    ENV_TABLE,
    NOTICE_FILTER_ATTRIBUTE,
    TTL_ATTRIBUTE,
    ClientSpec,
)


def spec_for(prefix: str, *clients: str) -> Deployment:
    return Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in clients))


async def test_provision_twice_returns_the_same_endpoints(aws: AwsContext, prefix: str) -> None:
    # GIVEN a provisioned two-client stack
    spec = spec_for(prefix, "bank-1", "bank-2")
    first = await provision(aws, spec)
    # WHEN it is provisioned again
    second = await provision(aws, spec)
    # THEN nothing new is created: same endpoints, one subscription per client
    assert first.model_dump(exclude={"principals"}) == second.model_dump(exclude={"principals"})
    # AND every principal holds a key still, a new one (IAM never shows a secret twice)
    assert set(first.principals) == set(second.principals)
    for name, key in second.principals.items():
        assert key.access_key_id != first.principals[name].access_key_id
    assert set(first.client_queue_urls) == {"bank-1", "bank-2"}
    subscriptions = await (await aws.sns()).list_subscriptions_by_topic(TopicArn=first.topic_arn)
    assert len(subscriptions["Subscriptions"]) == 2


async def test_table_has_the_shared_key_schema_stream_and_ttl(aws: AwsContext, prefix: str) -> None:
    endpoints = await provision(aws, spec_for(prefix))
    ddb = await aws.dynamodb()
    table = (await ddb.describe_table(TableName=endpoints.table))["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [
        ("task_name", "HASH"),
        ("sk", "RANGE"),
    ]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    ttl = await ddb.describe_time_to_live(TableName=endpoints.table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == TTL_ATTRIBUTE


async def test_queues_have_dead_letter_queues(aws: AwsContext, prefix: str) -> None:
    endpoints = await provision(aws, spec_for(prefix, "a"))
    sqs = await aws.sqs()
    for url, dlq in (
        (endpoints.control_queue_url, endpoints.control_dlq_url),
        (endpoints.client_queue_urls["a"], endpoints.client_dlq_urls["a"]),
    ):
        attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        dlq_arn = await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = json.loads(attrs["Attributes"]["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]


async def test_a_notice_reaches_only_the_queues_of_the_clients_it_names(
    aws: AwsContext, prefix: str
) -> None:
    # GIVEN three clients subscribed with their filter policies
    endpoints = await provision(aws, spec_for(prefix, "a", "b", "c"))
    # WHEN a notice addressed to a and b is published (String.Array attribute)
    await (await aws.sns()).publish(
        TopicArn=endpoints.topic_arn,
        Message='{"kind": "global_model_ready"}',
        MessageAttributes={
            NOTICE_FILTER_ATTRIBUTE: {
                "DataType": "String.Array",
                "StringValue": json.dumps(["a", "b"]),
            }
        },
    )
    # THEN a and b each receive the raw message, c receives nothing
    sqs = await aws.sqs()
    bodies = {}
    for client_id, url in endpoints.client_queue_urls.items():
        got = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        bodies[client_id] = [m["Body"] for m in got.get("Messages", [])]
    assert bodies == {
        "a": ['{"kind": "global_model_ready"}'],
        "b": ['{"kind": "global_model_ready"}'],
        "c": [],
    }


async def test_state_machine_runs_the_asl_with_placeholders_filled(
    aws: AwsContext, prefix: str
) -> None:
    endpoints = await provision(aws, spec_for(prefix))
    described = await (await aws.sfn()).describe_state_machine(
        stateMachineArn=endpoints.state_machine_arn
    )
    definition = json.loads(described["definition"])
    assert definition["States"]["OpenRound"]["Parameters"]["QueueUrl"] == (
        endpoints.control_queue_url
    )
    # the state machine writes the TASK item: the server table, not the silos' inbox
    assert definition["States"]["StartTask"]["Parameters"]["TableName"] == (
        endpoints.server_table
    )


async def test_embedded_stack_owns_its_server_and_state_and_restores_the_environment(
    moto_server: LocalMotoServer,
) -> None:
    # GIVEN the session's server and no handler environment
    os.environ.pop(ENV_TABLE, None)
    # WHEN an embedded stack runs without handlers
    async with EmbeddedStack(
        spec_for("own"), aggregate_handler=None, control_handler=None
    ) as stack:
        # THEN the handlers' environment points at its resources while it runs
        assert os.environ[ENV_TABLE] == stack.endpoints.table
        assert os.environ[ENV_CONTROL_QUEUE_URL] == stack.endpoints.control_queue_url
        assert os.environ[ENV_ENDPOINT_URL] == stack.endpoints.endpoint_url
        assert stack.endpoints.endpoint_url != moto_server.endpoint_url
        tables = await (await stack.aws.dynamodb()).list_tables()
        assert "own-table" in tables["TableNames"]
    # AND afterwards the environment is back
    assert ENV_TABLE not in os.environ
    # AND its server had state of its own: the session's server never saw that table
    async with AwsContext(moto_server.endpoint_url) as session_aws:
        tables = await (await session_aws.dynamodb()).list_tables()
    assert "own-table" not in tables["TableNames"]
