"""One description of the server's AWS resources, shared by the embedded stack and the CDK app.

Pure data: names, key schema, attribute names, placeholders. No boto, no CDK.
The embedded stack (`fedasync.local`) creates exactly these resources on moto;
`infra/` creates them on AWS. Where AWS must choose a globally unique name (the
bucket), the CDK app lets CloudFormation pick it and publishes it as an output.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedasync.core.config import CLIENT_ID_PATTERN
from fedasync.core.keys import UPDATE_PREFIX

# DynamoDB: two tables with one key schema. The inbox (`Deployment.table`) holds what
# silos write; the server table (`server_table_name`) what the server decides.
TABLE_PARTITION_KEY = "task_name"
TABLE_SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"

# SNS message attribute (String.Array of client ids) matched by each client's filter policy
NOTICE_FILTER_ATTRIBUTE = "client_ids"
# SNS takes at most 200 subscriptions with a filter policy per topic (default quota): the
# notices go out on topic shards, each client subscribed to one (see `topic_shard`).
FILTER_POLICIES_PER_TOPIC = 200

# The tag a client puts on its local-model uploads. S3 lifecycle filters take a key
# prefix or tags, and local keys start with the task name (`{task}/local/...`), so no
# prefix can select them: the tag is the only handle the expiry rule has.
LOCAL_UPDATE_TAG_KEY = "fedasync-kind"
LOCAL_UPDATE_TAG_VALUE = "local-update"
LOCAL_UPDATE_TAGGING = f"{LOCAL_UPDATE_TAG_KEY}={LOCAL_UPDATE_TAG_VALUE}"  # S3's `Tagging`

# The aggregate function's work is a write of an update item (`UPDATE_PREFIX`) in the
# inbox: its INSERT, or a MODIFY (a re-put: nothing, or a new submission after a
# rejection, see fedasync.core.verdicts); heartbeats are noise. The server's own writes
# are in the server table, which has no stream.
# Lambda's event filter (FilterCriteria on the stream mapping) and the embedded
# StreamPump both apply this one pattern, so no other record invokes the handler.
AGGREGATE_STREAM_FILTER: dict[str, Any] = {
    "eventName": ["INSERT", "MODIFY"],
    "dynamodb": {"Keys": {TABLE_SORT_KEY: {"S": [{"prefix": UPDATE_PREFIX}]}}},
}

# The control function and the waits it answers (CloseRound / Finalize `TimeoutSeconds`
# in the ASL). Lambda's rule for SQS sources: the queue's visibility timeout at least
# six times the function's timeout, so a batch still running is not handed out again.
# A failed control message reappears after the visibility timeout; the waits leave room
# for CONTROL_ATTEMPTS_WITHIN_WAIT attempts, each of which may run to the timeout:
#   (attempts - 1) * visibility + timeout = 2 * 360 + 60 = 780 s <= 900 s.
CONTROL_TIMEOUT_S = 60
CONTROL_VISIBILITY_S = 6 * CONTROL_TIMEOUT_S
CONTROL_WAIT_S = 900
CONTROL_ATTEMPTS_WITHIN_WAIT = 3

# The ASL file and the `${...}` placeholders it contains; both the embedded stack and
# CDK `DefinitionSubstitutions` fill every one of them.
ASL_PATH = Path(__file__).resolve().parent.parent / "stepfunctions" / "fl_task.asl.json"
ASL_PLACEHOLDERS = ("ServerTableName", "ControlQueueUrl")

# Environment variables the server handlers read (set by CDK on each Lambda, and by
# the embedded stack before it calls the handlers).
ENV_TABLE = "FEDASYNC_TABLE"  # the inbox
ENV_SERVER_TABLE = "FEDASYNC_SERVER_TABLE"
ENV_BUCKET = "FEDASYNC_BUCKET"
ENV_TOPIC_ARN = "FEDASYNC_TOPIC_ARN"
ENV_TOPIC_SHARDS = "FEDASYNC_TOPIC_SHARDS"
ENV_CONTROL_QUEUE_URL = "FEDASYNC_CONTROL_QUEUE_URL"
ENV_ENDPOINT_URL = "FEDASYNC_ENDPOINT_URL"
ENV_REGION = "AWS_DEFAULT_REGION"

# Handler entry points (module:function) for Lambda and the embedded pumps.
AGGREGATE_HANDLER = "server_lambdas.aggregate.lambda_handler"
CONTROL_HANDLER = "server_lambdas.control.lambda_handler"

_CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)
ROLE_NAME_MAX = 64  # IAM's limit on a role name


class ClientSpec(BaseModel):
    """One silo: its id and the AWS principal allowed to assume its role (CDK only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str
    principal: str | None = Field(
        default=None,
        description="ARN of the principal that may assume this client's role; "
        "defaults to the deploying account's root",
    )

    @field_validator("client_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _CLIENT_ID_RE.match(value):
            raise ValueError(
                f"client_id {value!r} must match {CLIENT_ID_PATTERN} "
                "(it becomes part of queue names and S3 keys)"
            )
        return value


def server_table_name(inbox_table: str) -> str:
    """The server table's name from the inbox's: every party that knows one knows both."""
    return f"{inbox_table}-server"


def topic_shard(client_id: str, shards: int) -> int:
    """The topic shard a client is subscribed to: a hash of its id, so every party (the
    handlers, the operator's CLI, the CDK app, the embedded stack) finds it from the shard
    count alone, with no table of assignments to keep in step."""
    digest = hashlib.sha256(client_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def topic_shard_count(client_ids: Iterable[str], per_topic: int = FILTER_POLICIES_PER_TOPIC) -> int:
    """The fewest shards that keep every topic within `per_topic` filtered subscriptions."""
    ids = set(client_ids)
    shards = max(1, math.ceil(len(ids) / per_topic))
    while ids and max(Counter(topic_shard(c, shards) for c in ids).values()) > per_topic:
        shards += 1
    return shards


def shard_topic(base: str, shard: int) -> str:
    """Shard `shard`'s topic name or ARN from shard 0's (the names differ by a suffix)."""
    return base if shard == 0 else f"{base}-{shard}"


def notice_filter_policy(client_id: str) -> dict[str, list[str]]:
    """SNS filter policy: a client's queue receives notices addressed to it."""
    return {NOTICE_FILTER_ATTRIBUTE: [client_id]}


def substitute_asl(definition: str, values: dict[str, str]) -> str:
    """Fill every `${Name}` placeholder of an ASL definition, as CDK DefinitionSubstitutions do."""
    missing = [name for name in ASL_PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"ASL substitutions missing for placeholders: {missing}")
    out = definition
    for name, value in values.items():
        out = out.replace("${" + name + "}", value)
    leftover = re.findall(r"\$\{([A-Za-z0-9_]+)\}", out)
    if leftover:
        raise ValueError(f"ASL placeholders left unfilled: {sorted(set(leftover))}")
    return out
