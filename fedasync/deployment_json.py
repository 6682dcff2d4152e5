"""A deployment's description as files hold it: the stack JSON `fedasync local up` writes
and `cdk deploy --outputs-file`'s outputs, read into `Deployment` fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedasync.aws.session import Credentials

# The CDK stack's outputs (infra/stack.py's CfnOutput ids, what `cdk deploy --outputs-file`
# writes) for the Deployment fields they fill: one table for the writer and the reader.
CDK_OUTPUT_IDS = {
    "region": "Region",
    "prefix": "Prefix",
    "bucket": "BucketName",
    "table": "TableName",
    "server_table": "ServerTableName",
    "topic_arn": "TopicArn",
    "topic_shards": "TopicShards",
    "control_queue_url": "ControlQueueUrl",
    "state_machine_arn": "StateMachineArn",
}


CLIENT_KEY_PREFIX = "client:"  # a silo's principal name: `client:<client_id>`


def key_json(key: Credentials | None) -> dict[str, str]:
    if key is None:
        return {}
    return {"aws_access_key_id": key.access_key_id, "aws_secret_access_key": key.secret_access_key}


def _key_of(entry: Any) -> Credentials | None:
    if isinstance(entry, Credentials):
        return entry
    if not isinstance(entry, Mapping):
        return None
    key = entry.get("aws_access_key_id", entry.get("access_key_id"))
    secret = entry.get("aws_secret_access_key", entry.get("secret_access_key"))
    return Credentials(str(key), str(secret)) if key and secret else None


def from_stack_json(data: dict[str, Any]) -> dict[str, Any]:
    """The stack JSON's shape (`stack_json`) as fields: `"clients"` as a mapping of id to
    queue and key, `"operator"`'s key, `"principals"` by name."""
    principals: dict[str, Any] = {}
    for name, entry in dict(data.get("principals") or {}).items():
        key = _key_of(entry)
        if key is not None:
            principals[name] = key
    clients = data.get("clients")
    if isinstance(clients, Mapping):
        urls = dict(data.get("client_queue_urls") or {})
        specs = []
        for client_id, given in clients.items():
            entry = dict(given or {})
            specs.append({"client_id": client_id, "principal": entry.get("principal")})
            if entry.get("queue_url"):
                urls[client_id] = entry["queue_url"]
            key = _key_of(entry)
            if key is not None:
                principals[CLIENT_KEY_PREFIX + client_id] = key
        data["clients"] = specs
        data["client_queue_urls"] = urls
    operator = _key_of(data.pop("operator", None))
    if operator is not None:
        principals["operator"] = operator
    if principals or "principals" in data:
        data["principals"] = principals
    return data


def from_cdk_outputs(data: dict[str, Any]) -> dict[str, Any]:
    """`cdk deploy --outputs-file`'s {StackName: {TableName, BucketName, ...}} as Deployment
    fields; anything else is returned as it is."""
    stacks = [v for v in data.values() if isinstance(v, dict) and "TableName" in v]
    if "table" in data or len(stacks) != 1:
        return data
    outputs = stacks[0]
    fields: dict[str, Any] = {
        field: outputs[key] for field, key in CDK_OUTPUT_IDS.items() if key in outputs
    }
    # no output per client: a silo finds its queue by its name (`client_queue_name`)
    return fields
