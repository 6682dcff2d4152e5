"""The AWS calls a silo really makes, recorded off its clients, as IAM would see them.

`CallRecorder` hooks botocore's `provide-client-params` event on the clients of one
`AwsContext`: it sees each operation with the parameters our code passed, before any
request is built. `iam_requests` turns one call into the (action, resource, condition
context) triples IAM authorises it as, by the rules of the AWS service authorization
reference; an operation it does not know raises, so a new call cannot slip past.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fedasync.aws.session import AwsContext

Request = tuple[str, str, dict[str, Any]]

# What DynamoDB puts in dynamodb:Select for a GetItem: SPECIFIC_ATTRIBUTES when a
# projection is given, ALL_ATTRIBUTES otherwise (and then no dynamodb:Attributes).
_PROJECTED = "SPECIFIC_ATTRIBUTES"
_S3_WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


@dataclass
class CallRecorder:
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def _record(self, service: str) -> Callable[..., None]:
        def handler(params: dict[str, Any], model: Any, **_: Any) -> None:
            self.calls.append((service, model.name, dict(params)))

        return handler

    async def attach(self, aws: AwsContext) -> None:
        """Record every call of `aws`'s S3, SQS and DynamoDB clients from now on."""
        for service, client in (
            ("s3", await aws.s3()),
            ("sqs", await aws.sqs()),
            ("dynamodb", await aws.dynamodb()),
        ):
            client.meta.events.register("provide-client-params", self._record(service))

    def operations(self) -> set[str]:
        return {f"{service}:{op}" for service, op, _ in self.calls}


@dataclass(frozen=True)
class Resources:
    """Where the recorded calls go, in the synthesized template's ARNs."""

    object_arn: Callable[[str], str]  # S3 key -> object ARN
    queue_arn: Callable[[str], str]  # queue name on the local stack -> ARN in the template
    table_arn: str


def _projection(params: dict[str, Any]) -> list[str]:
    names = params.get("ExpressionAttributeNames", {})
    parts = [p.strip() for p in str(params["ProjectionExpression"]).split(",")]
    return sorted(names.get(p, p) for p in parts)


def _dynamodb(op: str, params: dict[str, Any], where: Resources) -> list[Request]:
    if op == "PutItem":
        context: dict[str, Any] = {"dynamodb:Attributes": sorted(params["Item"])}
        if "ReturnValues" in params:
            context["dynamodb:ReturnValues"] = params["ReturnValues"]
        return [("dynamodb:PutItem", where.table_arn, context)]
    if op == "GetItem":
        context = {}
        if "ProjectionExpression" in params:
            context = {"dynamodb:Attributes": _projection(params), "dynamodb:Select": _PROJECTED}
        return [("dynamodb:GetItem", where.table_arn, context)]
    raise NotImplementedError(f"no IAM rule for dynamodb:{op}")


def _s3(op: str, params: dict[str, Any], where: Resources) -> list[Request]:
    target = where.object_arn(params["Key"])
    if op in _S3_WRITES:
        requests: list[Request] = [("s3:PutObject", target, {})]
        if "Tagging" in params:  # x-amz-tagging on a write also needs s3:PutObjectTagging
            tag_keys = [k for k, _ in parse_qsl(params["Tagging"], keep_blank_values=True)]
            requests.append(("s3:PutObjectTagging", target, {"s3:RequestObjectTagKeys": tag_keys}))
        return requests
    if op in ("GetObject", "HeadObject"):
        return [("s3:GetObject", target, {})]
    if op == "AbortMultipartUpload":
        return [("s3:AbortMultipartUpload", target, {})]
    raise NotImplementedError(f"no IAM rule for s3:{op}")


def _sqs(op: str, params: dict[str, Any], where: Resources) -> list[Request]:
    name = params.get("QueueName") or re.sub(r"^.*/", "", str(params["QueueUrl"]))
    if op in (
        "GetQueueUrl",
        "ReceiveMessage",
        "DeleteMessage",
        "ChangeMessageVisibility",
        "GetQueueAttributes",
    ):
        return [(f"sqs:{op}", where.queue_arn(name), {})]
    raise NotImplementedError(f"no IAM rule for sqs:{op}")


def iam_requests(service: str, op: str, params: dict[str, Any], where: Resources) -> list[Request]:
    translate = {"dynamodb": _dynamodb, "s3": _s3, "sqs": _sqs}[service]
    return translate(op, params, where)
