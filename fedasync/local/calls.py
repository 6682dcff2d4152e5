"""What IAM would authorise for one HTTP request to the embedded endpoint.

`authorisations(environ, body)` reads a request as the moto server receives it and returns
one `Call` per IAM authorisation AWS performs for it: the access key that signed it, the
action, the resource ARN, and the request fields that the condition keys our policies
use would read (`dynamodb:LeadingKeys`, `dynamodb:Attributes`, `dynamodb:Select`,
`dynamodb:ReturnValues`, `s3:prefix`, `s3:RequestObjectTagKeys`, ...). A transaction is
one authorisation per item; a batch one per table (per key for S3 DeleteObjects).

Stdlib only: it runs inside the moto server process for every request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fedasync.local.call import Call
from fedasync.local.calls_s3 import s3_calls

__all__ = ["Call", "authorisations", "signer"]

ACCOUNT = "123456789012"
PARTITION_KEY = "task_name"  # fedasync.resources.TABLE_PARTITION_KEY (stdlib only here)
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/")


@dataclass(frozen=True)
class _Signed:
    access_key: str
    region: str
    service: str


def signer(environ: Mapping[str, Any]) -> _Signed:
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    match = _CREDENTIAL.search(header) or _CREDENTIAL.search(
        "Credential="
        + unquote(parse_qs(str(environ.get("QUERY_STRING", ""))).get("X-Amz-Credential", [""])[0])
    )
    if match is None:
        return _Signed("", "us-east-1", "")
    return _Signed(match.group(1), match.group(2), match.group(3))


def authorisations(environ: Mapping[str, Any], body: bytes) -> list[Call]:
    path = str(environ.get("PATH_INFO", ""))
    signed = signer(environ)
    if path.startswith("/moto-api"):
        return [Call(signed.access_key, "moto-api:" + path.removeprefix("/moto-api/"), path)]
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        service, _, operation = target.partition(".")
        payload = _json(body)
        return [_with_key(c, signed) for c in _json_protocol(service, operation, payload, signed)]
    if signed.service == "s3":
        return [_with_key(c, signed) for c in s3_calls(environ, body)]
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if "Action" in form:
        return [_with_key(c, signed) for c in _query_protocol(signed.service, form, signed)]
    return [Call(signed.access_key, f"{signed.service or 'unknown'}:?", path)]


def _with_key(call: Call, signed: _Signed) -> Call:
    return Call(signed.access_key, call.action, call.resource, call.context, note=call.note)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _arn(service: str, signed: _Signed, resource: str) -> str:
    return f"arn:aws:{service}:{signed.region}:{ACCOUNT}:{resource}"


# --- JSON protocols: DynamoDB, DynamoDB Streams, SQS, Step Functions -------------------


def _json_protocol(
    service: str, operation: str, payload: dict[str, Any], signed: _Signed
) -> Iterator[Call]:
    if service.startswith("DynamoDBStreams"):
        # moto's shard iterators are `{stream arn}|1|{id}` (opaque on AWS)
        iterator = str(payload.get("ShardIterator", "")).split("|")[0]
        arn = str(
            payload.get("StreamArn")
            or (iterator if iterator.startswith("arn:") else "")
            or _arn("dynamodb", signed, "table/*/stream/*")
        )
        yield Call("", f"dynamodb:{operation}", "*" if operation == "ListStreams" else arn)
    elif service.startswith("DynamoDB"):
        yield from _dynamodb(operation, payload, signed)
    elif service == "AmazonSQS":
        yield Call("", f"sqs:{operation}", _queue_arn(payload, signed))
    elif service == "AWSStepFunctions":
        resource = payload.get("stateMachineArn") or payload.get("executionArn")
        if resource is None and "name" in payload and operation == "CreateStateMachine":
            resource = _arn("states", signed, f"stateMachine:{payload['name']}")
        yield Call("", f"states:{operation}", str(resource or "*"))
    else:
        yield Call("", f"{service}:{operation}", "*")


def _queue_arn(payload: Mapping[str, Any], signed: _Signed) -> str:
    url = payload.get("QueueUrl")
    if url:
        return _arn("sqs", signed, urlsplit(str(url)).path.rstrip("/").rsplit("/", 1)[-1])
    if "QueueName" in payload:
        return _arn("sqs", signed, str(payload["QueueName"]))
    return "*"


def _names(expression: str | None, names: Mapping[str, str]) -> list[str]:
    """Top-level attribute names a projection expression reads."""
    if not expression:
        return []
    out = []
    for part in expression.split(","):
        first = re.split(r"[.\[]", part.strip(), maxsplit=1)[0]
        out.append(names.get(first, first))
    return sorted(set(out))


def _table_context(payload: Mapping[str, Any], operation: str) -> dict[str, Any]:
    context: dict[str, Any] = {}
    key = payload.get("Key") or payload.get("Item") or {}
    leading = key.get(PARTITION_KEY, {}).get("S") if isinstance(key, dict) else None
    if leading is None:
        values = payload.get("ExpressionAttributeValues", {})
        condition = str(payload.get("KeyConditionExpression", ""))
        match = re.search(rf"(?:{PARTITION_KEY}|#\w+)\s*=\s*(:\w+)", condition)
        if match and match.group(1) in values:
            leading = values[match.group(1)].get("S")
    if leading is not None:
        context["dynamodb:LeadingKeys"] = [leading]
    names = payload.get("ExpressionAttributeNames", {})
    if operation == "PutItem":
        context["dynamodb:Attributes"] = sorted(payload.get("Item", {}))
    elif "ProjectionExpression" in payload:
        context["dynamodb:Attributes"] = _names(payload["ProjectionExpression"], names)
    elif "AttributesToGet" in payload:
        context["dynamodb:Attributes"] = sorted(payload["AttributesToGet"])
    for field_name, condition_key in (
        ("Select", "dynamodb:Select"),
        ("ReturnValues", "dynamodb:ReturnValues"),
        ("ReturnConsumedCapacity", "dynamodb:ReturnConsumedCapacity"),
    ):
        if field_name in payload:
            context[condition_key] = str(payload[field_name])
    return context


def _dynamodb(operation: str, payload: dict[str, Any], signed: _Signed) -> Iterator[Call]:
    def table(name: Any) -> str:
        return _arn("dynamodb", signed, f"table/{name}")

    if operation in ("BatchGetItem", "BatchWriteItem"):
        for name in payload.get("RequestItems", {}):
            yield Call("", f"dynamodb:{operation}", table(name))
    elif operation in ("TransactWriteItems", "TransactGetItems"):
        kinds = {
            "Put": "PutItem",
            "Update": "UpdateItem",
            "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheckItem",
            "Get": "GetItem",
        }
        for entry in payload.get("TransactItems", []):
            for kind, item in entry.items():
                action = kinds.get(kind, kind)
                yield from _table_call(action, item, table(item.get("TableName")))
    elif operation in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        yield Call("", f"dynamodb:{operation}", "*")
    else:
        yield from _table_call(operation, payload, table(payload.get("TableName")))


def _table_call(action: str, payload: Mapping[str, Any], resource: str) -> Iterator[Call]:
    yield Call("", f"dynamodb:{action}", resource, _table_context(payload, action))
    if payload.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD":
        # The failed write returns the whole existing item: a read of every attribute.
        context = _table_context(payload, "GetItem")
        context.pop("dynamodb:Attributes", None)
        yield Call(
            "",
            "dynamodb:GetItem",
            resource,
            context,
            note=f"implied by {action} ReturnValuesOnConditionCheckFailure=ALL_OLD",
        )


# --- query protocol: SNS (and SQS from older clients) ------------------------------------


def _query_protocol(service: str, form: Mapping[str, str], signed: _Signed) -> Iterator[Call]:
    action = form["Action"]
    if service == "sns":
        resource = form.get("TopicArn") or form.get("TargetArn") or form.get("SubscriptionArn")
        if action == "CreateTopic":
            resource = _arn("sns", signed, form.get("Name", "*"))
        yield Call("", f"sns:{action}", resource or "*")
    elif service == "sqs":
        yield Call("", f"sqs:{action}", _queue_arn(form, signed))
    else:
        yield Call("", f"{service}:{action}", "*")
