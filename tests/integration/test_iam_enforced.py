"""IAM per principal on the embedded stack: silo-0, with its own keys, reaches its own
things only. moto enforces what it can (S3 and SQS resources, actions); the call audit
(tests/call_audit.py) judges the rest by the synthesized template, e.g. a DynamoDB read
of a server item."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from client.config import MIN_PART_BYTES
from fedasync.aws.session import AwsContext, denial, refusal_message
from fedasync.aws.transfer import upload_file
from fedasync.cli import app
from fedasync.cli.local import write_files
from fedasync.core import keys
from fedasync.deployment import Deployment
from fedasync.local.principals import stack_arns
from fedasync.local.stack import EmbeddedStack
from fedasync.policy.definitions import client_statements
from fedasync.policy.evaluate import Request, Statement, evaluate
from fedasync.resources import ClientSpec
from tests.call_audit import expect_refused

TASK = "digits"
SILOS = ("silo-0", "silo-1")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStack]:
    spec = Deployment(prefix="enforced", clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    async with EmbeddedStack(
        spec, enforce_iam=True, aggregate_handler=None, control_handler=None
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stack_config(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # what `fedasync local up --stack-config PATH` writes
    path = tmp_path_factory.mktemp("stack") / "stack.json"
    write_files(stack.endpoints, path)
    return path


def _silo0(stack_config: Path) -> tuple[dict, AwsContext]:
    data = json.loads(stack_config.read_text())
    # the keys handed out are the silos' and the operator's, none of the server's roles
    assert set(data["clients"]) == set(SILOS)
    assert "principals" not in data
    mine = data["clients"]["silo-0"]
    assert set(mine) == {"queue_url", "aws_access_key_id", "aws_secret_access_key"}
    assert set(data["operator"]) == {"aws_access_key_id", "aws_secret_access_key"}
    from fedasync.aws.session import Credentials

    credentials = Credentials(mine["aws_access_key_id"], mine["aws_secret_access_key"])
    return data, AwsContext(data["endpoint_url"], data["region"], credentials)


async def _refused(call: object) -> str:
    """The one line a CLI prints for the refusal."""
    with pytest.raises(ClientError) as caught:
        await call  # type: ignore[misc]
    assert denial(caught.value) is not None, caught.value.response
    return refusal_message(caught.value, "client silo-0")


async def test_silo0_is_refused_what_is_not_its_own(
    stack: EmbeddedStack, stack_config: Path
) -> None:
    # GIVEN silo-0 signing with its own key from the stack config
    data, aws = _silo0(stack_config)
    principal = "client:silo-0"
    async with aws:
        s3, sqs, ddb = await aws.s3(), await aws.sqs(), await aws.dynamodb()
        bucket, table = data["bucket"], data["table"]
        # WHEN it writes under silo-1's prefix THEN S3 refuses (moto enforces the resource)
        other_key = keys.local_key(TASK, "silo-1", 1, "u1")
        expect_refused(principal, "s3:PutObject", f"arn:aws:s3:::{bucket}/{other_key}")
        line = await _refused(s3.put_object(Bucket=bucket, Key=other_key, Body=b"x"))
        assert line == "client silo-0 may not call PutObject (missing permission): Access Denied"
        # WHEN it receives from silo-1's queue THEN SQS refuses
        other_queue = data["clients"]["silo-1"]["queue_url"]
        expect_refused(principal, "sqs:ReceiveMessage", "*:enforced-client-silo-1")
        line = await _refused(sqs.receive_message(QueueUrl=other_queue))
        assert line == (
            "client silo-0 may not call ReceiveMessage (missing permission): User: "
            "arn:aws:iam::123456789012:user/enforced-client-silo-0 is not authorized to "
            "perform: sqs:ReceiveMessage"
        )
        # WHEN it sends to the control queue THEN SQS refuses
        control = stack.endpoints.control_queue_url
        expect_refused(principal, "sqs:SendMessage", "*:enforced-control")
        line = await _refused(sqs.send_message(QueueUrl=control, MessageBody="{}"))
        assert line.endswith("is not authorized to perform: sqs:SendMessage")
        # WHEN it reads the TASK item THEN the deployed role refuses it: moto cannot
        # evaluate the condition keys, so the audit must (declared here, judged at the end)
        expect_refused(principal, "dynamodb:GetItem", f"*:table/{table}")
        key = {"task_name": {"S": TASK}, "sk": {"S": "TASK"}}
        await ddb.get_item(TableName=table, Key=key)
    # AND the definition it was given says so too, naming the failed condition
    statements = [
        Statement.from_json(s)
        for s in client_statements(
            "silo-0",
            f"arn:aws:sqs:us-east-1:123456789012:{stack.spec.client_queue_name('silo-0')}",
            stack_arns(stack.spec, stack.endpoints.stream_arn),
        )
    ]
    table_arn = f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}"
    decision = evaluate(statements, Request(principal, "dynamodb:GetItem", table_arn, {}))
    assert not decision.allowed
    ((_, failed),) = decision.near_misses
    assert failed == ("Null dynamodb:Attributes ['false']",)


def test_no_principal_can_reset_the_stack(stack: EmbeddedStack) -> None:
    # WHEN anyone but the stack's own process calls /moto-api/reset THEN it is refused
    request = urllib.request.Request(
        f"{stack.endpoints.endpoint_url}/moto-api/reset", data=b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 403


async def test_silo0_honest_round_trip_succeeds(stack: EmbeddedStack, stack_config: Path) -> None:
    # GIVEN a global model and a notice for silo-0 (the server's side, as the admin)
    data, aws = _silo0(stack_config)
    bucket, table = data["bucket"], data["table"]
    admin_s3 = await stack.aws.s3()
    await admin_s3.put_object(Bucket=bucket, Key=keys.global_key(TASK, 0), Body=b"global")
    admin_sqs = await stack.aws.sqs()
    await admin_sqs.send_message(QueueUrl=data["clients"]["silo-0"]["queue_url"], MessageBody="n")
    async with aws:
        s3, sqs, ddb = await aws.s3(), await aws.sqs(), await aws.dynamodb()
        queue = data["clients"]["silo-0"]["queue_url"]
        # WHEN it receives its notice, downloads the global, uploads its update, records it
        got = await sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
        (message,) = got["Messages"]
        body = await (await s3.get_object(Bucket=bucket, Key=keys.global_key(TASK, 0)))[
            "Body"
        ].read()
        own = keys.local_key(TASK, "silo-0", 1, "u1")
        await s3.put_object(Bucket=bucket, Key=own, Body=body + b"+silo-0")
        item = {
            "task_name": {"S": TASK},
            "sk": {"S": "UPDATE#00000001#silo-0"},
            "client_id": {"S": "silo-0"},
            "s3_key": {"S": own},
        }
        await ddb.put_item(TableName=table, Item=item, ReturnValues="NONE")
        await sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    # THEN every step went through, and the object is there, as the server reads it
    stored = await (await admin_s3.get_object(Bucket=bucket, Key=own))["Body"].read()
    assert stored == b"global+silo-0"


def test_a_refused_client_run_ends_in_one_error_line(stack_config: Path) -> None:
    # GIVEN silo-0's stack config entry, pointed at silo-1's queue
    data = json.loads(stack_config.read_text())
    other_queue = data["clients"]["silo-1"]["queue_url"]
    args = ["client", "run", "--task", TASK, "--client-id", "silo-0", "--trainer", "numpy"]
    args += ["--stack-config", str(stack_config), "--queue-url", other_queue]
    expect_refused("client:silo-0", "sqs:ReceiveMessage", "*:enforced-client-silo-1")
    # WHEN it runs THEN it exits 1 with one line naming the principal and the permission
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: client silo-0 may not call ReceiveMessage (missing permission): User: "
        "arn:aws:iam::123456789012:user/enforced-client-silo-0 is not authorized to "
        "perform: sqs:ReceiveMessage"
    )
    assert "Traceback" not in result.output


async def test_silo0_tags_its_update_in_the_upload_itself(
    stack: EmbeddedStack, stack_config: Path, tmp_path: Path
) -> None:
    # GIVEN silo-0 with its own key, and two local models: one PutObject, one multipart
    data, aws = _silo0(stack_config)
    bucket = data["bucket"]
    small, large = tmp_path / "small.safetensors", tmp_path / "large.safetensors"
    small.write_bytes(b"s" * 1000)
    large.write_bytes(b"l" * (2 * MIN_PART_BYTES + 1))
    own = [keys.local_key(TASK, "silo-0", 2, name) for name in ("small", "large")]
    admin_s3 = await stack.aws.s3()
    async with aws:
        s3 = await aws.s3()
        # WHEN it uploads them as the client does (the tag rides on the upload request:
        # x-amz-tagging on PutObject / CreateMultipartUpload, no PutObjectTagging after)
        for key, path in zip(own, (small, large), strict=True):
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            await upload_file(s3, bucket, key, path, sha256=sha, part_size=MIN_PART_BYTES)
        # THEN both carry exactly the expiry rule's tag, read back as the stack admin
        for key in own:
            tagging = await admin_s3.get_object_tagging(Bucket=bucket, Key=key)
            assert tagging["TagSet"] == [{"Key": "fedasync-kind", "Value": "local-update"}]
        # AND a tag of its own choosing is refused by the deployed role, which lets a
        # silo set only the expiry tag's key (s3:RequestObjectTagKeys: moto cannot
        # evaluate it, the audit does: declared here, judged at the end of the run)
        expect_refused("client:silo-0", "s3:PutObjectTagging", f"arn:aws:s3:::{bucket}/{own[0]}")
        await s3.put_object_tagging(
            Bucket=bucket, Key=own[0], Tagging={"TagSet": [{"Key": "owner", "Value": "me"}]}
        )
