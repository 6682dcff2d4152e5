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

from fedasync.core.messages import Heartbeat, UpdateRecord
from fedasync.resources import (
    TABLE_PARTITION_KEY,
    TABLE_SORT_KEY,
    TTL_ATTRIBUTE,
    ClientSpec,
)
from infra.config import LOCAL_UPDATE_TAG_KEY
from infra.messaging import ClientQueue
from infra.nag import acknowledge_wildcard_resource

QUEUE_ACTIONS = (
    "sqs:GetQueueUrl",  # a silo started without --queue-url finds its queue by name
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
)
# s3:PutObject authorises PutObject, CreateMultipartUpload, UploadPart and
# CompleteMultipartUpload alike.
UPLOAD_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
TAG_ACTIONS = ("s3:PutObjectTagging",)
DOWNLOAD_ACTIONS = ("s3:GetObject",)
TABLE_WRITE_ACTIONS = ("dynamodb:PutItem",)
TABLE_CHECK_ACTIONS = ("dynamodb:GetItem",)

# Attribute names a client's items may carry: the wire models' fields plus the keys.
CLIENT_ITEM_ATTRIBUTES = tuple(
    sorted(
        {TABLE_PARTITION_KEY, TABLE_SORT_KEY, TTL_ATTRIBUTE}
        | set(UpdateRecord.model_fields)
        | set(Heartbeat.model_fields)
    )
)

# IAM's `*` matches '/', so these patterns catch keys with more segments than the
# layout has: local objects are `{task}/local/{client}/{file}` (3 slashes), readable
# objects `{task}/global/{file}` or `{task}/final.safetensors` (at most 2).
DEEPER_THAN_LOCAL = "*/*/*/*/*"
DEEPER_THAN_GLOBAL = "*/*/*/*"


@dataclass(frozen=True)
class ClientAccess:
    client_id: str
    role: iam.Role


def local_objects(bucket: s3.IBucket, client_id: str) -> str:
    return bucket.arn_for_objects(f"*/local/{client_id}/*")


def client_policy(
    client_id: str, queue: ClientQueue, bucket: s3.IBucket, table: dynamodb.ITable
) -> iam.PolicyDocument:
    own_local = local_objects(bucket, client_id)
    return iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(
                sid="ReceiveOwnNotices",
                actions=list(QUEUE_ACTIONS),
                resources=[queue.queue.queue_arn],
            ),
            iam.PolicyStatement(
                sid="UploadOwnLocalModels", actions=list(UPLOAD_ACTIONS), resources=[own_local]
            ),
            iam.PolicyStatement(
                sid="TagOwnLocalModelsForExpiry",
                actions=list(TAG_ACTIONS),
                resources=[own_local],
                conditions={
                    "ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": [LOCAL_UPDATE_TAG_KEY]}
                },
            ),
            iam.PolicyStatement(
                sid="DenyWritesOutsideTheKeyLayout",
                effect=iam.Effect.DENY,
                actions=[*UPLOAD_ACTIONS, *TAG_ACTIONS],
                resources=[bucket.arn_for_objects(DEEPER_THAN_LOCAL)],
            ),
            iam.PolicyStatement(
                sid="DownloadGlobalModels",
                actions=list(DOWNLOAD_ACTIONS),
                resources=[
                    bucket.arn_for_objects("*/global/*"),
                    bucket.arn_for_objects("*/final.safetensors"),
                ],
            ),
            iam.PolicyStatement(
                sid="DenyReadsOutsideTheKeyLayout",
                effect=iam.Effect.DENY,
                actions=list(DOWNLOAD_ACTIONS),
                resources=[bucket.arn_for_objects(DEEPER_THAN_GLOBAL)],
            ),
            iam.PolicyStatement(
                sid="WriteRecords",
                actions=list(TABLE_WRITE_ACTIONS),
                resources=[table.table_arn],
                conditions={
                    "ForAllValues:StringEquals": {
                        "dynamodb:Attributes": list(CLIENT_ITEM_ATTRIBUTES)
                    },
                    "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
                },
            ),
            # The client asks "is my update already recorded?" before training again. It
            # may learn that a key exists, never what an item holds: the request must
            # name its projection (Null: false), and project only the key.
            iam.PolicyStatement(
                sid="CheckRecordExists",
                actions=list(TABLE_CHECK_ACTIONS),
                resources=[table.table_arn],
                conditions={
                    "Null": {"dynamodb:Attributes": "false"},
                    "ForAllValues:StringEquals": {
                        "dynamodb:Attributes": [TABLE_PARTITION_KEY, TABLE_SORT_KEY]
                    },
                    "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"},
                },
            ),
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
        clients: tuple[ClientSpec, ...],
        queues: tuple[ClientQueue, ...],
        bucket: s3.IBucket,
        table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        by_id = {q.client_id: q for q in queues}
        self.roles = tuple(self._role(c, by_id[c.client_id], bucket, table) for c in clients)

    def _role(
        self, client: ClientSpec, queue: ClientQueue, bucket: s3.IBucket, table: dynamodb.ITable
    ) -> ClientAccess:
        role = iam.Role(
            self,
            f"Client-{client.client_id}",
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
