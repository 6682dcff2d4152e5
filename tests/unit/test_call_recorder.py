"""What the moto server records per request: the IAM authorisations AWS would make.

The requests are written by hand as a WSGI server hands them over (headers as HTTP_*),
in the shapes botocore sends (JSON protocol with X-Amz-Target, S3 REST, SNS query).
"""

from __future__ import annotations

import json
from typing import Any

from fedasync.local.calls import authorisations

AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261201/eu-west-1/{service}/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=abc"
)


def environ(
    service: str, method: str = "POST", path: str = "/", query: str = "", **headers: str
) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_AUTHORIZATION": AUTH.format(service=service),
    }
    env.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return env


def test_a_get_item_names_the_table_the_partition_and_the_projection() -> None:
    body = {
        "TableName": "p-table",
        "Key": {"task_name": {"S": "digits"}, "sk": {"S": "UPDATE#1"}},
        "ProjectionExpression": "#pk, sk",
        "ExpressionAttributeNames": {"#pk": "task_name"},
    }
    env = environ("dynamodb", x_amz_target="DynamoDB_20120810.GetItem")
    (call,) = authorisations(env, json.dumps(body).encode())
    assert call.access_key == "AKIAEXAMPLE"
    assert call.action == "dynamodb:GetItem"
    assert call.resource == "arn:aws:dynamodb:eu-west-1:123456789012:table/p-table"
    assert call.context == {
        "dynamodb:LeadingKeys": ["digits"],
        "dynamodb:Attributes": ["sk", "task_name"],
    }


def test_a_put_with_all_old_on_failure_is_also_a_read_of_the_whole_item() -> None:
    body = {
        "TableName": "p-table",
        "Item": {"task_name": {"S": "t"}, "sk": {"S": "s"}, "sha256": {"S": "x"}},
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    env = environ("dynamodb", x_amz_target="DynamoDB_20120810.PutItem")
    put, read = authorisations(env, json.dumps(body).encode())
    assert (put.action, put.context["dynamodb:Attributes"]) == (
        "dynamodb:PutItem",
        ["sha256", "sk", "task_name"],
    )
    assert read.action == "dynamodb:GetItem" and "dynamodb:Attributes" not in read.context


def test_a_transaction_is_one_authorisation_per_item() -> None:
    body = {
        "TransactItems": [
            {"Put": {"TableName": "a", "Item": {"task_name": {"S": "t"}}}},
            {"Update": {"TableName": "a", "Key": {"task_name": {"S": "t"}}}},
            {"ConditionCheck": {"TableName": "b", "Key": {"task_name": {"S": "u"}}}},
        ]
    }
    env = environ("dynamodb", x_amz_target="DynamoDB_20120810.TransactWriteItems")
    calls = authorisations(env, json.dumps(body).encode())
    assert [c.action for c in calls] == [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
    ]
    assert calls[2].resource.endswith(":table/b")


def test_an_sqs_receive_names_the_queue_arn_from_its_url() -> None:
    body = {"QueueUrl": "http://127.0.0.1:5000/123456789012/p-client-silo-1"}
    env = environ("sqs", x_amz_target="AmazonSQS.ReceiveMessage")
    (call,) = authorisations(env, json.dumps(body).encode())
    assert (call.action, call.resource) == (
        "sqs:ReceiveMessage",
        "arn:aws:sqs:eu-west-1:123456789012:p-client-silo-1",
    )


def test_sns_publish_in_the_query_protocol() -> None:
    body = b"Action=Publish&TopicArn=arn%3Aaws%3Asns%3Aeu-west-1%3A123456789012%3At&Message=x"
    (call,) = authorisations(environ("sns"), body)
    assert (call.action, call.resource) == ("sns:Publish", "arn:aws:sns:eu-west-1:123456789012:t")


def test_s3_requests_map_to_their_iam_actions() -> None:
    def one(method: str, path: str, query: str = "", **headers: str) -> list[tuple[str, str]]:
        return [
            (c.action, c.resource)
            for c in authorisations(environ("s3", method, path, query, **headers), b"")
        ]

    obj = "arn:aws:s3:::b/t/local/c/1.safetensors"
    assert one("PUT", "/b/t/local/c/1.safetensors") == [("s3:PutObject", obj)]
    assert one("POST", "/b/t/local/c/1.safetensors", "uploads") == [("s3:PutObject", obj)]
    assert one("PUT", "/b/t/local/c/1.safetensors", "partNumber=1&uploadId=u") == [
        ("s3:PutObject", obj)
    ]
    assert one("DELETE", "/b/t/local/c/1.safetensors", "uploadId=u") == [
        ("s3:AbortMultipartUpload", obj)
    ]
    assert one("GET", "/b/t/local/c/1.safetensors", "uploadId=u") == [
        ("s3:ListMultipartUploadParts", obj)
    ]
    assert one("HEAD", "/b/t/global/1") == [("s3:GetObject", "arn:aws:s3:::b/t/global/1")]
    assert one("GET", "/b", "list-type=2&prefix=t%2F") == [("s3:ListBucket", "arn:aws:s3:::b")]
    tagged = authorisations(
        environ("s3", "PUT", "/b/k", x_amz_tagging="fedasync-kind=local-update"), b""
    )
    assert [c.action for c in tagged] == ["s3:PutObject", "s3:PutObjectTagging"]
    assert tagged[1].context == {"s3:RequestObjectTagKeys": ["fedasync-kind"]}


def test_a_listing_records_its_prefix() -> None:
    (call,) = authorisations(environ("s3", "GET", "/b", "list-type=2&prefix=t%2Flocal%2F"), b"")
    assert call.context == {"s3:prefix": "t/local/"}


def test_the_management_api_is_recorded_as_such() -> None:
    (call,) = authorisations(environ("s3", "POST", "/moto-api/reset"), b"")
    assert call.action == "moto-api:reset"
