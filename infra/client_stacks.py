"""The clients' queues, subscriptions and roles, in nested stacks of at most 75 clients.

A client costs 6 CloudFormation resources (queue, dead-letter queue, their two TLS-only
queue policies, the subscription, the role). A template holds 500 resources and 200
outputs, so one stack stopped at about 80 clients. Here each nested stack
(`AWS::CloudFormation::Stack`, one resource of the parent) holds up to
`CLIENTS_PER_STACK` clients: 75 x 6 = 450 resources, no outputs. A client's queue URL
and role ARN follow from names (`Deployment.client_queue_url` / `client_role_arn`), not
from an output per client.

Clients are placed in the clients file's order, 75 per nested stack: append new clients
at the end. Reordering or removing one in the middle moves others to another nested
stack, which CloudFormation does as delete-and-create of named queues and roles (a
deploy that can fail on the names, and loses the queued notices of the moved clients).
"""

from __future__ import annotations

from aws_cdk import CfnParameter, NestedStack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.resources import ClientSpec
from infra.client_access import ClientAccess, ClientRoles
from infra.messaging import ClientQueue, client_queue

CLIENTS_PER_STACK = 75
PARAM_BUCKET, PARAM_TABLE, PARAM_TOPIC = "BucketArn", "TableArn", "TopicArn"


class ClientStack(NestedStack):
    """Up to CLIENTS_PER_STACK clients: each one's queues, subscription and role."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        clients: tuple[ClientSpec, ...],
        topics: tuple[sns.ITopic, ...],
        bucket: s3.IBucket,
        table: dynamodb.ITable,
    ) -> None:
        if len(clients) > CLIENTS_PER_STACK:
            raise ValueError(
                f"{len(clients)} clients in one nested stack; at most {CLIENTS_PER_STACK}"
            )
        first, last = clients[0].client_id, clients[-1].client_id
        # The parent's resources come in as named parameters: the policies then read
        # `{"Ref": "BucketArn"}`, which cdk-nag's acknowledgements and the call audit
        # (fedasync/policy/template.py) can name.
        given = {PARAM_BUCKET: bucket.bucket_arn, PARAM_TABLE: table.table_arn}
        given.update({f"{PARAM_TOPIC}{i}": t.topic_arn for i, t in enumerate(topics)})
        super().__init__(
            scope,
            construct_id,
            description=f"fedasync {spec.prefix}: queues and roles of clients {first} .. {last}",
            parameters=given,
        )
        value = {name: CfnParameter(self, name).value_as_string for name in given}
        bucket = s3.Bucket.from_bucket_arn(self, "Models", value[PARAM_BUCKET])
        table = dynamodb.Table.from_table_arn(self, "Table", value[PARAM_TABLE])
        topics = tuple(
            sns.Topic.from_topic_arn(self, f"Topic{i}", value[f"{PARAM_TOPIC}{i}"])
            for i in range(len(topics))
        )
        self.queues: tuple[ClientQueue, ...] = tuple(
            client_queue(self, spec, c.client_id, topics) for c in clients
        )
        roles = ClientRoles(
            self,
            "Roles",
            spec=spec,
            clients=clients,
            queues=self.queues,
            bucket=bucket,
            table=table,
        )
        self.roles: tuple[ClientAccess, ...] = roles.roles


def client_stacks(
    scope: Construct,
    *,
    spec: Deployment,
    topics: tuple[sns.ITopic, ...],
    bucket: s3.IBucket,
    table: dynamodb.ITable,
) -> tuple[ClientStack, ...]:
    """`Clients0`, `Clients1`, ...: the clients in order, CLIENTS_PER_STACK to a stack."""
    clients = spec.clients
    return tuple(
        ClientStack(
            scope,
            f"Clients{i // CLIENTS_PER_STACK}",
            spec=spec,
            clients=clients[i : i + CLIENTS_PER_STACK],
            topics=topics,
            bucket=bucket,
            table=table,
        )
        for i in range(0, len(clients), CLIENTS_PER_STACK)
    )
