"""The client role's policy, parsed and evaluated: a silo reaches its own things only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cdk.support import TRAINER_ARN, Synth, require_cdk

require_cdk()

from client.config import MIN_PART_BYTES, ClientConfig  # noqa: E402
from client.ports import AwsClientPorts  # noqa: E402
from fedasync.aws.session import AwsContext  # noqa: E402
from fedasync.core.keys import final_key, global_key, local_key  # noqa: E402
from fedasync.core.messages import Heartbeat, UpdateRecord  # noqa: E402
from fedasync.deployment import Deployment  # noqa: E402  # noqa: E402
from fedasync.local.provision import provision  # noqa: E402
from fedasync.local.server import LocalMotoServer  # noqa: E402
from fedasync.policy.evaluate import Request, Statement, could_allow, evaluate  # noqa: E402
from fedasync.policy.template import ACCOUNT, Resolver, principal_statements  # noqa: E402
from fedasync.resources import ClientSpec  # noqa: E402
from infra.client_access import CLIENT_ITEM_ATTRIBUTES  # noqa: E402
from tests.cdk.client_calls import CallRecorder, Resources, iam_requests  # noqa: E402

pytestmark = pytest.mark.cdk

TASK = "digits"
CLIENTS = ("hospital-a", "bank-b", "datacentre-c")
SPEC = Deployment(clients=tuple(ClientSpec(client_id=c) for c in CLIENTS))
REGION = SPEC.region


@dataclass(frozen=True)
class Policy:
    """A client role's statements, as the call audit reads them from the template."""

    statements: tuple[Statement, ...]

    def allows(self, action: str, resource: str, context: dict[str, Any] | None = None) -> bool:
        """With a context: IAM's decision. Without: whether any context could get it
        through (`could_allow`), so False proves no condition whatsoever helps."""
        if context is None:
            return could_allow(self.statements, action, resource)
        return evaluate(self.statements, Request("client", action, resource, context)).allowed


def _role(synth: Synth, client_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The client's role resource and the (nested) template that holds it."""
    wanted = f"fedasync client {client_id}:"
    (found,) = [
        (r, template)
        for template in (synth.template, *synth.nested.values())
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Role"
        and r["Properties"].get("Description", "").startswith(wanted)
    ]
    return found


def bucket_object(synth: Synth, key: str) -> str:
    # the models bucket as the audit's resolver names it (the embedded stack's name)
    return f"arn:aws:s3:::{SPEC.bucket}/{key}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/fedasync-table"
GOOD_PUT = {
    "dynamodb:Attributes": ["task_name", "sk", "client_id", "s3_key"],
    "dynamodb:ReturnValues": "NONE",
}


@pytest.fixture(scope="module")
def policies(default_synth: Synth) -> dict[str, Policy]:
    statements = principal_statements(default_synth.template, SPEC, nested=default_synth.nested)
    return {c: Policy(statements[f"client:{c}"]) for c in CLIENTS}


# --- S3 -------------------------------------------------------------------------------


def test_a_client_uploads_under_its_own_prefix_only(default_synth: Synth, policies: Any) -> None:
    # GIVEN hospital-a's role WHEN it uploads its local model THEN S3 allows it
    own = bucket_object(default_synth, local_key(TASK, "hospital-a", 3, "u1"))
    for action in ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"):
        assert policies["hospital-a"].allows(action, own)
    # AND no condition whatsoever lets it write another client's prefix or the server's keys
    for key in (
        local_key(TASK, "bank-b", 3, "u1"),
        f"{TASK}/local/bank-b/local/hospital-a/00000003-u1.safetensors",  # `*` crosses '/'
        f"{TASK}/local/hospital-a/extra/00000003-u1.safetensors",
        global_key(TASK, 4),
        final_key(TASK),
        f"{TASK}/buffer/00000001.safetensors",
    ):
        target = bucket_object(default_synth, key)
        assert not policies["hospital-a"].allows("s3:PutObject", target), key
        assert not policies["hospital-a"].allows("s3:PutObjectTagging", target), key


def test_a_client_reads_global_models_and_nothing_local(
    default_synth: Synth, policies: Any
) -> None:
    policy = policies["bank-b"]
    assert policy.allows("s3:GetObject", bucket_object(default_synth, global_key(TASK, 7)))
    assert policy.allows("s3:GetObject", bucket_object(default_synth, final_key(TASK)))
    for key in (
        local_key(TASK, "hospital-a", 3, "u1"),
        local_key(TASK, "bank-b", 3, "u1"),  # not even its own uploads: nothing needs it
        f"{TASK}/local/global/00000003-u1.safetensors",  # a client named 'global'
        f"{TASK}/buffer/00000001.safetensors",
    ):
        assert not policy.allows("s3:GetObject", bucket_object(default_synth, key)), key
    assert not policy.allows("s3:ListBucket", bucket_object(default_synth, "")[:-1])


def test_tagging_is_limited_to_the_expiry_tag(default_synth: Synth, policies: Any) -> None:
    own = bucket_object(default_synth, local_key(TASK, "hospital-a", 3, "u1"))
    policy = policies["hospital-a"]
    assert policy.allows("s3:PutObjectTagging", own, {"s3:RequestObjectTagKeys": ["fedasync-kind"]})
    assert not policy.allows("s3:PutObjectTagging", own, {"s3:RequestObjectTagKeys": ["owner"]})


# --- SQS ------------------------------------------------------------------------------


def test_a_client_consumes_its_own_queue_only(policies: Any) -> None:
    actions = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")
    for client in CLIENTS:
        for action in actions:
            assert policies[client].allows(action, queue_arn(f"fedasync-client-{client}"))
            for other in CLIENTS:
                if other != client:
                    assert not policies[client].allows(
                        action, queue_arn(f"fedasync-client-{other}")
                    )
            for server_queue in (
                "fedasync-control",
                "fedasync-control-dlq",
                f"fedasync-client-{client}-dlq",
                "fedasync-aggregate-failures",
            ):
                assert not policies[client].allows(action, queue_arn(server_queue))
        assert not policies[client].allows(
            "sqs:SendMessage", queue_arn(f"fedasync-client-{client}")
        )
        assert not policies[client].allows("sqs:PurgeQueue", queue_arn(f"fedasync-client-{client}"))


# --- DynamoDB -------------------------------------------------------------------------


def test_a_client_only_puts_record_shaped_items(policies: Any) -> None:
    policy = policies["hospital-a"]
    assert policy.allows("dynamodb:PutItem", TABLE_ARN, GOOD_PUT)
    # attributes only the server writes, and reading an overwritten item back, are refused
    bad_attributes = {**GOOD_PUT, "dynamodb:Attributes": ["task_name", "sk", "token"]}
    assert not policy.allows("dynamodb:PutItem", TABLE_ARN, bad_attributes)
    read_back = {**GOOD_PUT, "dynamodb:ReturnValues": "ALL_OLD"}
    assert not policy.allows("dynamodb:PutItem", TABLE_ARN, read_back)
    assert "client_id" in CLIENT_ITEM_ATTRIBUTES
    assert not {"token", "task_token", "head_version"} & set(CLIENT_ITEM_ATTRIBUTES)


def test_a_client_may_check_a_key_exists_but_never_read_an_item(policies: Any) -> None:
    policy = policies["bank-b"]
    key_only = {"dynamodb:Attributes": ["sk"], "dynamodb:Select": "SPECIFIC_ATTRIBUTES"}
    assert policy.allows("dynamodb:GetItem", TABLE_ARN, key_only)
    # the key and the object key the record names (so that a squatter's item under its
    # key is not taken for its own record); the object itself it cannot read
    own_object = {**key_only, "dynamodb:Attributes": ["sk", "s3_key"]}
    assert policy.allows("dynamodb:GetItem", TABLE_ARN, own_object)
    # no projection (the whole item), or a projection of any of the record's content
    assert not policy.allows("dynamodb:GetItem", TABLE_ARN, {})
    for content in ("sha256", "num_examples", "metrics", "client_id", "verdict"):
        assert not policy.allows(
            "dynamodb:GetItem", TABLE_ARN, {**key_only, "dynamodb:Attributes": ["sk", content]}
        ), content
    assert not policy.allows(
        "dynamodb:GetItem", TABLE_ARN, {**key_only, "dynamodb:Select": "ALL_ATTRIBUTES"}
    )
    for action in (
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:PartiQLSelect",
        "dynamodb:PartiQLInsert",
    ):
        assert not policy.allows(action, TABLE_ARN), action


# --- everything else ------------------------------------------------------------------


def test_client_roles_reach_nothing_else(default_synth: Synth, policies: Any) -> None:
    for policy in policies.values():
        for statement in policy.statements:
            assert statement.not_actions is None and statement.not_resources is None
            assert "*" not in statement.resources
            assert not any("*" in a for a in statement.actions)
        for action, resource in (
            ("states:SendTaskSuccess", "*"),
            ("sns:Publish", "*"),
            ("kms:Decrypt", "*"),
            (
                "s3:DeleteObject",
                bucket_object(default_synth, local_key(TASK, "hospital-a", 1, "x")),
            ),
            ("iam:PassRole", "*"),
            ("sts:AssumeRole", "*"),
        ):
            assert not policy.allows(action, resource), action


def test_each_role_is_assumable_by_its_configured_principal(
    default_synth: Synth, solo_synth: Synth
) -> None:
    # GIVEN no principal in infra/clients.yaml THEN the deploying account's root is trusted
    for client in CLIENTS:
        role, template = _role(default_synth, client)
        (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        principal = Resolver(template, SPEC).resolve(statement["Principal"])
        assert principal == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    # GIVEN a principal in another account THEN exactly that principal, never '*'
    role, _ = _role(solo_synth, "lab-1")
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement == {
        "Action": "sts:AssumeRole",
        "Effect": "Allow",
        "Principal": {"AWS": TRAINER_ARN},
    }


# --- the calls a silo really makes ------------------------------------------------------

# Every operation the silo's ports use (client/ports.py, fedasync/aws/objects.py and transfer.py,
# fedasync/aws/records.py, fedasync/aws/queues.py); the run below must make each one.
SILO_OPERATIONS = {
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "s3:GetObject",
    "s3:PutObject",
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
    "s3:AbortMultipartUpload",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
}


async def _silo_session(ports: AwsClientPorts, admin: AwsContext, bucket: str, tmp: Path) -> None:
    """One silo's whole conversation with AWS, through its real ports."""
    # a notice to receive, lease and delete; a global model to download (the server's part)
    sqs = await admin.sqs()
    await sqs.send_message(QueueUrl=ports.queue_url, MessageBody="{}")
    model = b"global-model" * 100
    sha = hashlib.sha256(model).hexdigest()
    s3 = await admin.s3()
    await s3.put_object(Bucket=bucket, Key=global_key(TASK, 0), Body=model)
    messages = await ports.receive()
    await ports.extend([m.receipt_handle for m in messages])
    await ports.delete([m.receipt_handle for m in messages])
    await ports.download(global_key(TASK, 0), sha, tmp / "global", lambda _: None)
    # a small upload (one PutObject) and a large one (multipart)
    for update_id, size in (("u1", 1000), ("u2", MIN_PART_BYTES + 1)):
        path = tmp / update_id
        path.write_bytes(b"w" * size)
        key = local_key(TASK, "hospital-a", 0, update_id)
        await ports.upload(path, key, hashlib.sha256(path.read_bytes()).hexdigest(), lambda _: 0)
    # a multipart upload that fails midway (here: its progress callback) is aborted
    path = tmp / "u3"
    path.write_bytes(b"w" * (MIN_PART_BYTES + 1))

    def broken(_: int) -> None:
        raise RuntimeError("the disk went away")

    with pytest.raises(ExceptionGroup):
        await ports.upload(path, local_key(TASK, "hospital-a", 0, "u3"), "0" * 64, broken)
    record = UpdateRecord(
        task_name=TASK,
        client_id="hospital-a",
        update_id="u1",
        base_version=0,
        round_id=0,
        s3_key=local_key(TASK, "hospital-a", 0, "u1"),
        sha256="0" * 64,
        size_bytes=1000,
        num_examples=10,
        metrics={"loss": 0.5},
    )
    assert not await ports.update_exists(TASK, record.sk, record.s3_key)
    assert await ports.put_update(record)
    assert not await ports.put_update(record)  # a retry: refused by its condition
    assert await ports.update_exists(TASK, record.sk, record.s3_key)
    assert not await ports.update_exists(TASK, record.sk, local_key(TASK, "hospital-a", 0, "u2"))
    await ports.put_heartbeat(
        Heartbeat(task_name=TASK, client_id="hospital-a", sent_at=1.0, expires_at=31, version=0)
    )


async def test_every_call_a_silo_makes_is_one_its_role_allows(
    default_synth: Synth,
    policies: Any,
    moto_server: LocalMotoServer,
    prefix: str,
    tmp_path: Path,
) -> None:
    # GIVEN a local stack for hospital-a and its real ports, with every call recorded
    spec = Deployment(prefix=prefix, clients=(ClientSpec(client_id="hospital-a"),))
    cfg = ClientConfig(
        task_name=TASK,
        client_id="hospital-a",
        endpoint_url=moto_server.endpoint_url,
        prefix=prefix,
        part_size=MIN_PART_BYTES,
    )
    recorder = CallRecorder()
    async with (
        AwsContext(moto_server.endpoint_url) as admin,
        AwsContext(moto_server.endpoint_url) as silo,
    ):
        endpoints = await provision(admin, spec)
        await recorder.attach(silo)
        # WHEN the silo receives a notice, downloads, uploads, records and heartbeats
        ports = await AwsClientPorts.open(silo, cfg)
        await _silo_session(ports, admin, endpoints.bucket, tmp_path)
    # THEN it used every operation it has (so the check below covers them all) ...
    assert recorder.operations() == SILO_OPERATIONS
    # ... and the deployed role allows each call exactly as it was made
    where = Resources(
        object_arn=lambda key: bucket_object(default_synth, key),
        queue_arn=lambda name: queue_arn(name.replace(prefix, "fedasync", 1)),
        table_arn=TABLE_ARN,
    )
    policy = policies["hospital-a"]
    for service, op, params in recorder.calls:
        # no condition key names it, so IAM cannot allow it narrowly: a silo never asks
        assert "ReturnValuesOnConditionCheckFailure" not in params, (service, op)
        for action, resource, context in iam_requests(service, op, params, where):
            assert policy.allows(action, resource, context), (action, resource, context)
