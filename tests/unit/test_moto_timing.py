"""The moto server's per-request timing (bench/scale.py --profile) and its caches of moto's
own bookkeeping (fedasync/local/moto_speed.py): the requests are written by hand as a WSGI
server hands them over, and the caches must answer exactly what moto answered."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fedasync.local import moto_speed
from fedasync.local.moto_timing import operation, time_requests
from tests.unit.test_call_recorder import environ


def test_each_protocol_is_named_by_service_and_operation() -> None:
    # GIVEN a DynamoDB (JSON protocol), an SQS (JSON), an SNS (query) and two S3 requests
    ddb = environ("dynamodb", x_amz_target="DynamoDB_20120810.UpdateItem")
    streams = environ("dynamodb", x_amz_target="DynamoDBStreams_20120810.GetRecords")
    sqs = environ("sqs", x_amz_target="AmazonSQS.ReceiveMessage")
    sns = environ("sns")
    get = environ("s3", method="GET", path="/bucket/task/global/00000001.safetensors")
    listing = environ("s3", method="GET", path="/bucket")
    # THEN each is named as the table in bench/scale.py names it
    assert operation(ddb, b"{}") == "DynamoDB:UpdateItem"
    assert operation(streams, b"{}") == "DynamoDBStreams:GetRecords"
    assert operation(sqs, b"{}") == "AmazonSQS:ReceiveMessage"
    assert operation(sns, b"Action=Publish&TopicArn=arn") == "sns:Publish"
    assert operation(get, b"") == "s3:GET object"
    assert operation(listing, b"") == "s3:GET bucket"


def test_a_timed_request_is_served_unchanged_and_recorded(tmp_path: Path) -> None:
    # GIVEN an app that echoes the body it reads, wrapped by the timer
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [env["wsgi.input"].read()]

    log = tmp_path / "timing.jsonl"
    wrapped = time_requests(app, str(log))
    env = environ("sns")
    env.update({"CONTENT_LENGTH": "14", "wsgi.input": io.BytesIO(b"Action=Publish")})
    # WHEN one request goes through
    out = list(wrapped(env, lambda *a: None))
    # THEN the app still read the whole body, and one line names the request and its key
    assert out == [b"Action=Publish"]
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["op"], line["key"]) == ("sns:Publish", "AKIAEXAMPLE")
    assert line["wall_s"] >= line["cpu_s"] >= 0


def test_the_cached_camelcase_conversion_answers_as_moto_did() -> None:
    # GIVEN moto's attribute names, converted by hand
    expected = {
        "ReceiveMessageWaitTimeSeconds": "receive_message_wait_time_seconds",
        "ApproximateNumberOfMessages": "approximate_number_of_messages",
        "KmsMasterKeyId": "kms_master_key_id",
        "QueueArn": "queue_arn",
        "": "",
    }
    # WHEN the cache is installed (twice: a second install changes nothing)
    moto_speed.cache_camelcase()
    moto_speed.cache_camelcase()
    from moto.core import utils
    from moto.sqs import models

    # THEN each name converts as before, twice in a row, in moto's SQS models too
    for name, snake in expected.items():
        assert utils.camelcase_to_underscores(name) == snake
        assert models.camelcase_to_underscores(name) == snake


def test_the_cached_method_names_are_the_class_methods() -> None:
    # GIVEN moto's SQS response class, whose actions are its methods
    from moto.core import responses
    from moto.sqs.responses import SQSResponse

    # WHEN the cache is installed
    moto_speed.cache_method_names()
    names = responses.method_names_from_class(SQSResponse)
    # THEN an action is found as before, and a non-method is not
    assert {"receive_message", "delete_message", "send_message"} <= names
    assert "not_an_action" not in names
    assert responses.method_names_from_class(SQSResponse) is names  # listed once
