"""What each principal may do: the policy statements, as IAM JSON, given resource ARNs.

The one definition of the stack's permissions. `infra/` builds its roles' statements
from these functions (with CDK tokens as the ARNs); `fedasync.local.provision` puts the
same JSON on the embedded stack's principals (with the embedded resources' ARNs).
What CDK adds on its own (an event source's read grants, a log group's write grant) is
mirrored here for the embedded stack only (`event_source_statements`); the call audit,
which judges against the synthesized template, shows any drift between the two.

Why each statement is there (the calls that use it) is in infra/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedasync.core.messages import Heartbeat, UpdateRecord
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY, TTL_ATTRIBUTE

Json = dict[str, Any]

# --- clients (silos) -------------------------------------------------------------------

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
TABLE_WRITE_ACTIONS = ("dynamodb:PutItem",)  # the inbox only: never the server table
TABLE_CHECK_ACTIONS = ("dynamodb:GetItem",)
# The tag a client puts on its local-model uploads (infra/config.py's lifecycle rule).
LOCAL_UPDATE_TAG_KEY = "fedasync-kind"

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

# What a silo may see of an item in the inbox when it asks "is my update recorded?":
# the key, and the object the record names (its own key names its own object, so an
# item squatting its key, which it did not write, is not taken for its own).
CHECK_ATTRIBUTES = (TABLE_PARTITION_KEY, TABLE_SORT_KEY, "s3_key")

# --- server (the aggregate and control functions) ---------------------------------------

# The server only reads the inbox: its decisions go to the server table.
INBOX_READ_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
# TransactWriteItems is not an IAM action: each item of a transaction is authorised as
# the PutItem / UpdateItem / ConditionCheckItem it contains. BatchGetItem: the
# aggregator reads a round's update records in one call (`ServerStore.get_items`).
TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
)
OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
# Without s3:ListBucket, S3 answers a GetObject/HeadObject of a missing key with 403,
# not 404: the server could not tell "no such model yet" from "not allowed". It may
# read every object of the bucket already, so listing the keys discloses nothing more.
BUCKET_ACTIONS = ("s3:ListBucket",)
TASK_RESPONSE_ACTIONS = (
    "states:SendTaskSuccess",
    "states:SendTaskFailure",
    "states:SendTaskHeartbeat",
)
STREAM_READ_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
)
CONSUME_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
)
DLQ_SEND_ACTIONS = ("sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl")


@dataclass(frozen=True)
class StackArns:
    """The ARNs the statements name (CDK tokens in infra/, real ARNs in the embedded stack)."""

    table: str  # the inbox: what silos write
    stream: str
    bucket: str
    topic: str  # shard 0's
    control_queue: str
    aggregate_failures: str
    state_machine: str
    # the state machine's executions: arn:...:execution:{state machine name}:*
    executions: str = ""
    # every notice topic shard (fedasync.resources.topic_shard_count); () means `topic` only
    topics: tuple[str, ...] = ()
    # what the server decides (TASK, ROUND, verdicts): no silo statement names it
    server_table: str = ""

    @property
    def notice_topics(self) -> list[str]:
        return list(self.topics or (self.topic,))


def _allow(
    actions: tuple[str, ...], resources: list[str], sid: str | None = None, **condition: Any
) -> Json:
    statement: Json = {"Effect": "Allow", "Action": list(actions), "Resource": resources}
    if sid:
        statement["Sid"] = sid
    if condition:
        statement["Condition"] = condition["condition"]
    return statement


def _server_table(arns: StackArns) -> str:
    if not arns.server_table:
        raise ValueError("the stack's ARNs name no server table (StackArns.server_table)")
    return arns.server_table


def _deny(actions: tuple[str, ...], resources: list[str], sid: str) -> Json:
    return {"Sid": sid, "Effect": "Deny", "Action": list(actions), "Resource": resources}


def local_objects(bucket: str, client_id: str) -> str:
    return f"{bucket}/*/local/{client_id}/*"


def client_statements(client_id: str, queue: str, arns: StackArns) -> list[Json]:
    own_local = local_objects(arns.bucket, client_id)
    return [
        _allow(QUEUE_ACTIONS, [queue], "ReceiveOwnNotices"),
        _allow(UPLOAD_ACTIONS, [own_local], "UploadOwnLocalModels"),
        _allow(
            TAG_ACTIONS,
            [own_local],
            "TagOwnLocalModelsForExpiry",
            condition={
                "ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": [LOCAL_UPDATE_TAG_KEY]}
            },
        ),
        _deny(
            (*UPLOAD_ACTIONS, *TAG_ACTIONS),
            [f"{arns.bucket}/{DEEPER_THAN_LOCAL}"],
            "DenyWritesOutsideTheKeyLayout",
        ),
        _allow(
            DOWNLOAD_ACTIONS,
            [f"{arns.bucket}/*/global/*", f"{arns.bucket}/*/final.safetensors"],
            "DownloadGlobalModels",
        ),
        _deny(
            DOWNLOAD_ACTIONS,
            [f"{arns.bucket}/{DEEPER_THAN_GLOBAL}"],
            "DenyReadsOutsideTheKeyLayout",
        ),
        _allow(
            TABLE_WRITE_ACTIONS,
            [arns.table],
            "WriteRecords",
            condition={
                "ForAllValues:StringEquals": {"dynamodb:Attributes": list(CLIENT_ITEM_ATTRIBUTES)},
                "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
            },
        ),
        # The client asks "is my update already recorded?" before training again. It
        # may learn that a key exists and which object its record names, never what it holds:
        # the request must name its projection (Null: false), within CHECK_ATTRIBUTES.
        _allow(
            TABLE_CHECK_ACTIONS,
            [arns.table],
            "CheckRecordExists",
            condition={
                "Null": {"dynamodb:Attributes": "false"},
                "ForAllValues:StringEquals": {"dynamodb:Attributes": list(CHECK_ATTRIBUTES)},
                "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"},
            },
        ),
    ]


def server_statements(arns: StackArns) -> list[Json]:
    """What both server functions are granted explicitly (the same for aggregate and control)."""
    return [
        _allow(INBOX_READ_ACTIONS, [arns.table], "ReadTheInbox"),
        _allow(TABLE_ACTIONS, [_server_table(arns)], "KeepDecisions"),
        _allow(OBJECT_ACTIONS, [f"{arns.bucket}/*"]),
        _allow(BUCKET_ACTIONS, [arns.bucket]),
        _allow(("sns:Publish",), arns.notice_topics),
        # SendTask* are authorised against the state machine's ARN (as CDK's grant does).
        _allow(TASK_RESPONSE_ACTIONS, [arns.state_machine]),
    ]


def event_source_statements(function: str, arns: StackArns) -> list[Json]:
    """What CDK's event sources grant the function's role (mirrored for the embedded stack)."""
    if function == "aggregate":
        return [
            _allow(DLQ_SEND_ACTIONS, [arns.aggregate_failures]),
            _allow(("dynamodb:ListStreams",), ["*"]),
            _allow(STREAM_READ_ACTIONS, [arns.stream]),
        ]
    if function == "control":
        return [_allow(CONSUME_ACTIONS, [arns.control_queue])]
    raise ValueError(f"no event source for function {function!r}")


def control_statements(arns: StackArns) -> list[Json]:
    """The control function alone: a control message is acted on only if the task's
    execution sent it, read in the execution's history (fedasync/server/control.py); a
    message whose handling failed is made visible again within seconds, not after the
    queue's 360 s (server_lambdas/control.py). The event source's consume grant covers
    that call too; stated here as the handler's own, so it stays if the grant changes."""
    return [
        _allow(("states:GetExecutionHistory",), [arns.executions], "ReadExecutionHistory"),
        _allow(("sqs:ChangeMessageVisibility",), [arns.control_queue], "RetryFailedControlSoon"),
    ]


# --- the state machine -------------------------------------------------------------------


def state_machine_statements(actions: set[str], arns: StackArns) -> list[Json]:
    """The ASL's integrations (`fedasync.policy.asl.required_actions`), each service on
    the one resource it may touch: SQS the control queue, DynamoDB the table. Any other
    service fails here until someone decides what it may touch."""
    scopes = {"sqs": arns.control_queue, "dynamodb": _server_table(arns)}
    grouped: dict[str, list[str]] = {}
    for action in sorted(actions):
        service = action.split(":")[0]
        if service not in scopes:
            raise ValueError(
                f"the ASL calls {action}; the state machine role grants only "
                f"{sorted(scopes)} integrations: add a scoped grant in fedasync/policy/definitions.py"
            )
        grouped.setdefault(service, []).append(action)
    return [_allow(tuple(a), [scopes[service]]) for service, a in grouped.items()]


# --- the operator (`fedasync task ...`, `fedasync events ...`) ----------------------------

OPERATOR_TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
)
OPERATOR_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject")
# `task status`, `events export`: the updates and heartbeats, read only.
OPERATOR_INBOX_ACTIONS = ("dynamodb:GetItem", "dynamodb:Query")


def operator_statements(arns: StackArns) -> list[Json]:
    """Start, watch, stop and export tasks: the TASK item, global and final models, the
    task's execution, the final notice and the callback of a stop."""
    return [
        _allow(OPERATOR_TABLE_ACTIONS, [_server_table(arns)], "ManageTaskItems"),
        _allow(OPERATOR_INBOX_ACTIONS, [arns.table], "ReadTheInbox"),
        _allow(OPERATOR_OBJECT_ACTIONS, [f"{arns.bucket}/*"], "ReadAndSeedModels"),
        _allow(BUCKET_ACTIONS, [arns.bucket], "TellMissingModelsApart"),
        _allow(("states:StartExecution",), [arns.state_machine], "StartTasks"),
        _allow(
            ("states:DescribeExecution", "states:StopExecution"),
            [arns.executions],
            "WatchAndStopTasks",
        ),
        # A stop answers the open round's or task's callback (as the functions do).
        _allow(("states:SendTaskSuccess",), [arns.state_machine], "AnswerTheOpenCallback"),
        _allow(("sns:Publish",), arns.notice_topics, "AnnounceTheFinalModel"),
    ]
