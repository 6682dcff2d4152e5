"""One IAM role per client (silo), and exactly what it may do.

What IAM enforces here, per client `c`:
- SQS: receive / delete / change visibility / read attributes on queue `c`'s ARN only.
- S3 write: `s3:PutObject` (which also covers the multipart calls), abort and list parts
  of its own uploads, and tag them, only under `{task}/local/c/`. A Deny on keys deeper
  than `{task}/local/{client}/{file}` closes the gap an IAM `*` leaves (it matches `/`):
  without it `c` could write `{task}/local/OTHER/local/c/x`, a key under OTHER's prefix.
- S3 read: `{task}/global/{file}` and `{task}/final.safetensors` only (same depth rule);
  no local model of anyone, no FedBuff buffers, no ListBucket.
- DynamoDB, on the table ARN only: `PutItem` whose attribute names are those of an
  update record or a heartbeat (`dynamodb:Attributes`) and `ReturnValues` NONE;
  `GetItem` only when it projects nothing but the key (an existence check). No
  Query/Scan/Delete/Update/Batch/PartiQL.
- Nothing else: no KMS (bucket SSE-S3, queues SSE-SQS, table AWS-managed key), no SNS,
  no Step Functions (a task token read anywhere is useless to a client).

What IAM cannot enforce, and what does instead:
- The sort key and attribute values. DynamoDB condition keys see the partition key
  (`dynamodb:LeadingKeys`: the task name, created at run time, so unusable here) and
  attribute *names*, never the sort key or any value. So IAM cannot stop `c` from
  putting an item under another client's key (`UPDATE#...#OTHER`, `HEARTBEAT#OTHER`),
  over a `TASK`/`ROUND` item, or with `client_id = OTHER`. The server side answers:
  the aggregator rejects a record whose `client_id` disagrees with its S3 key
  (`UpdateRecord.check_key`) and whose object's SHA-256 differs from the record's; `c`
  can neither write under OTHER's prefix nor read OTHER's objects to learn a checksum.
  What stays possible is denial of service: taking OTHER's sync-round slot first, or
  clobbering a server item. Only moving client writes off the shared table would close
  that (records written by the server from S3 events, or a per-client partition).
- `ReturnValuesOnConditionCheckFailure`: no condition key names it, so a client should
  not send it; whether DynamoDB refuses ALL_OLD under the attribute restriction could
  not be verified without an AWS account.
- Which task a client works on: task names are created at run time, after this role.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.policy import definitions
from fedasync.policy.definitions import (
    CLIENT_ITEM_ATTRIBUTES,
    DEEPER_THAN_GLOBAL,
    DEEPER_THAN_LOCAL,
    StackArns,
)
from fedasync.resources import ClientSpec
from infra.config import LOCAL_UPDATE_TAG_KEY
from infra.messaging import ClientQueue
from infra.nag import acknowledge_wildcard_resource

__all__ = ["CLIENT_ITEM_ATTRIBUTES", "DEEPER_THAN_GLOBAL", "DEEPER_THAN_LOCAL", "ClientRoles"]

if LOCAL_UPDATE_TAG_KEY != definitions.LOCAL_UPDATE_TAG_KEY:  # one tag, two homes
    raise ValueError("infra.config.LOCAL_UPDATE_TAG_KEY differs from fedasync.policy's")


@dataclass(frozen=True)
class ClientAccess:
    client_id: str
    role: iam.Role


def local_objects(bucket: s3.IBucket, client_id: str) -> str:
    return definitions.local_objects(bucket.bucket_arn, client_id)


def client_policy(
    client_id: str, queue: ClientQueue, bucket: s3.IBucket, table: dynamodb.ITable
) -> iam.PolicyDocument:
    """`fedasync.policy.definitions.client_statements`, with this stack's ARNs."""
    arns = StackArns(
        table=table.table_arn,
        stream="",
        bucket=bucket.bucket_arn,
        topic="",
        control_queue="",
        aggregate_failures="",
        state_machine="",
    )
    return iam.PolicyDocument(
        statements=[
            iam.PolicyStatement.from_json(statement)
            for statement in definitions.client_statements(client_id, queue.queue.queue_arn, arns)
        ]
    )


def _trust(client: ClientSpec) -> iam.IPrincipal:
    """The principal named for this client in the config; the deploying account if none."""
    if client.principal is None:
        return iam.AccountRootPrincipal()
    if client.principal.isdigit():
        return iam.AccountPrincipal(client.principal)
    return iam.ArnPrincipal(client.principal)


class ClientRoles(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        clients: tuple[ClientSpec, ...],
        queues: tuple[ClientQueue, ...],
        bucket: s3.IBucket,
        table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        self._spec = spec
        by_id = {q.client_id: q for q in queues}
        self.roles = tuple(self._role(c, by_id[c.client_id], bucket, table) for c in clients)

    def _role(
        self, client: ClientSpec, queue: ClientQueue, bucket: s3.IBucket, table: dynamodb.ITable
    ) -> ClientAccess:
        role = iam.Role(
            self,
            f"Client-{client.client_id}",
            # named by the rule a client computes its role ARN with (Deployment)
            role_name=self._spec.client_role_name(client.client_id),
            assumed_by=_trust(client),
            description=f"fedasync client {client.client_id}: its queue, its S3 prefix, its records",
            inline_policies={"client": client_policy(client.client_id, queue, bucket, table)},
        )
        acknowledge_wildcard_resource(
            role,
            local_objects(bucket, client.client_id),
            "Task names are created at run time, so the task segment of the client's own "
            "prefix {task}/local/{client_id}/ cannot be named; deeper keys are denied.",
        )
        for pattern in ("*/global/*", "*/final.safetensors"):
            acknowledge_wildcard_resource(
                role,
                bucket.arn_for_objects(pattern),
                "Global models of every task (created at run time) are what a client "
                "downloads; deeper keys are denied, so no client's local prefix matches.",
            )
        return ClientAccess(client_id=client.client_id, role=role)
