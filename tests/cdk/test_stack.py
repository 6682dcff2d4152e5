"""The synthesised stack, read as a specification: what exists, how it is locked down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cdk.support import Synth, require_cdk

require_cdk()

from aws_cdk.assertions import Match, Template  # noqa: E402

from fedasync.deployment import CDK_OUTPUT_IDS, Deployment  # noqa: E402
from fedasync.resources import (  # noqa: E402
    AGGREGATE_HANDLER,
    AGGREGATE_STREAM_FILTER,
    ASL_PLACEHOLDERS,
    CONTROL_ATTEMPTS_WITHIN_WAIT,
    CONTROL_HANDLER,
    CONTROL_TIMEOUT_S,
    CONTROL_VISIBILITY_S,
    CONTROL_WAIT_S,
    ENV_BUCKET,
    ENV_CONTROL_QUEUE_URL,
    ENV_TABLE,
    ENV_TOPIC_ARN,
    TABLE_PARTITION_KEY,
    TABLE_SORT_KEY,
    TTL_ATTRIBUTE,
    notice_filter_policy,
)
from infra.asl_check import required_actions  # noqa: E402

pytestmark = pytest.mark.cdk

DEFAULT_CLIENTS = ("hospital-a", "bank-b", "datacentre-c")
SERVER_QUEUES = 3  # control, control DLQ, the stream's failure queue
SERVER_ROLES = 3  # state machine, aggregate, control


def _logical_id(synth: Synth, cfn_type: str, **props: Any) -> str:
    (found,) = [
        k
        for k, r in synth.all_resources(cfn_type).items()
        if all(r["Properties"].get(p) == v for p, v in props.items())
    ]
    return found


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


@pytest.mark.parametrize(("fixture", "clients"), [("solo_synth", 1), ("default_synth", 3)])
def test_resource_counts_follow_the_client_count(
    fixture: str, clients: int, request: pytest.FixtureRequest
) -> None:
    synth = request.getfixturevalue(fixture)
    template = Template.from_json(synth.template)
    # the server's own resources in the stack, the clients' in one nested stack
    template.resource_count_is("AWS::SQS::Queue", SERVER_QUEUES)
    template.resource_count_is("AWS::SQS::QueuePolicy", SERVER_QUEUES)
    template.resource_count_is("AWS::SNS::Subscription", 0)
    template.resource_count_is("AWS::IAM::Role", SERVER_ROLES)
    template.resource_count_is("AWS::CloudFormation::Stack", 1)
    (nested,) = [Template.from_json(t) for t in synth.nested.values()]
    nested.resource_count_is("AWS::SQS::Queue", 2 * clients)
    nested.resource_count_is("AWS::SQS::QueuePolicy", 2 * clients)
    nested.resource_count_is("AWS::SNS::Subscription", clients)
    nested.resource_count_is("AWS::IAM::Role", clients)
    for cfn_type, count in (
        ("AWS::SNS::Topic", 1),
        ("AWS::DynamoDB::Table", 2),  # the silos' inbox and the server table
        ("AWS::S3::Bucket", 2),
        ("AWS::StepFunctions::StateMachine", 1),
        ("AWS::Lambda::Function", 2),
        ("AWS::Lambda::EventSourceMapping", 2),
        ("AWS::KMS::Key", 1),
    ):
        template.resource_count_is(cfn_type, count)


def test_everything_is_encrypted_at_rest(default_synth: Synth) -> None:
    template = Template.from_json(default_synth.template)
    for bucket in default_synth.resources("AWS::S3::Bucket").values():
        (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    template.has_resource_properties(
        "AWS::DynamoDB::Table", {"SSESpecification": {"SSEEnabled": True}}
    )
    template.has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [Match.any_value(), "Arn"]}}
    )
    template.all_resources_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True})
    for nested in default_synth.nested.values():  # the clients' queues
        Template.from_json(nested).all_resources_properties(
            "AWS::SQS::Queue", {"SqsManagedSseEnabled": True}
        )
    template.all_resources_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_models_bucket_is_private_versioned_logged_and_expires_local_updates(
    default_synth: Synth,
) -> None:
    props = default_synth.template["Resources"][
        _logical_id(default_synth, "AWS::S3::Bucket", VersioningConfiguration={"Status": "Enabled"})
    ]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert "DestinationBucketName" in props["LoggingConfiguration"]
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-local-updates"]["TagFilters"] == [
        {"Key": "fedasync-kind", "Value": "local-update"}
    ]
    assert rules["expire-local-updates"]["ExpirationInDays"] == 30
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]


def test_table_keys_stream_ttl_and_recovery_come_from_resources(default_synth: Synth) -> None:
    Template.from_json(default_synth.template).has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "TableName": Deployment().table,
            "KeySchema": [
                {"AttributeName": TABLE_PARTITION_KEY, "KeyType": "HASH"},
                {"AttributeName": TABLE_SORT_KEY, "KeyType": "RANGE"},
            ],
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
            "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )
    # AND the server table: the same keys, no stream, recovery and encryption as well
    server = _logical_id(
        default_synth, "AWS::DynamoDB::Table", TableName=Deployment().server_table
    )
    props = default_synth.resources("AWS::DynamoDB::Table")[server]["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": TABLE_PARTITION_KEY, "KeyType": "HASH"},
        {"AttributeName": TABLE_SORT_KEY, "KeyType": "RANGE"},
    ]
    assert "StreamSpecification" not in props
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}


def test_every_resource_policy_is_tls_only_and_never_open(default_synth: Synth) -> None:
    policies = {
        "AWS::S3::BucketPolicy": "PolicyDocument",
        "AWS::SQS::QueuePolicy": "PolicyDocument",
        "AWS::SNS::TopicPolicy": "PolicyDocument",
        "AWS::KMS::Key": "KeyPolicy",
    }
    for cfn_type, field in policies.items():
        for logical_id, resource in default_synth.all_resources(cfn_type).items():
            statements = _statements(resource["Properties"][field])
            for statement in statements:
                principal = statement.get("Principal")
                if principal in ("*", {"AWS": "*"}):
                    assert statement.get("Condition"), f"{logical_id}: open principal {statement}"
            if cfn_type == "AWS::KMS::Key":
                continue
            assert any(
                s["Effect"] == "Deny"
                and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                for s in statements
            ), f"{logical_id} does not refuse plain HTTP"
    for role in default_synth.all_resources("AWS::IAM::Role").values():
        for statement in _statements(role["Properties"]["AssumeRolePolicyDocument"]):
            assert statement["Principal"] not in ("*", {"AWS": "*"})


def test_each_client_queue_is_subscribed_with_its_filter_and_has_a_dlq(
    default_synth: Synth,
) -> None:
    spec = Deployment()
    (nested,) = default_synth.nested.values()
    template = Template.from_json(nested)
    for client in DEFAULT_CLIENTS:
        queue_id = _logical_id(
            default_synth, "AWS::SQS::Queue", QueueName=spec.client_queue_name(client)
        )
        dlq_id = _logical_id(
            default_synth, "AWS::SQS::Queue", QueueName=spec.client_dlq_name(client)
        )
        template.has_resource_properties(
            "AWS::SQS::Queue",
            {
                "QueueName": spec.client_queue_name(client),
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
                    "maxReceiveCount": Match.any_value(),
                },
            },
        )
        template.has_resource_properties(
            "AWS::SNS::Subscription",
            {
                "Protocol": "sqs",
                "Endpoint": {"Fn::GetAtt": [queue_id, "Arn"]},
                "RawMessageDelivery": True,
                "FilterPolicy": notice_filter_policy(client),
            },
        )


def test_state_machine_is_the_asl_file_inlined_with_every_placeholder(
    default_synth: Synth, asl_text: str
) -> None:
    (machine,) = default_synth.resources("AWS::StepFunctions::StateMachine").values()
    props = machine["Properties"]
    assert "DefinitionS3Location" not in props
    # the template holds the file verbatim; CloudFormation fills the placeholders
    assert props["DefinitionString"] == asl_text
    table_id = _logical_id(
        default_synth, "AWS::DynamoDB::Table", TableName=Deployment().server_table
    )
    queue_id = _logical_id(
        default_synth, "AWS::SQS::Queue", QueueName=Deployment().control_queue_name
    )
    assert props["DefinitionSubstitutions"] == {
        "ServerTableName": {"Ref": table_id},
        "ControlQueueUrl": {"Ref": queue_id},
    }
    assert set(props["DefinitionSubstitutions"]) == set(ASL_PLACEHOLDERS)
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False


def test_state_machine_role_grants_exactly_the_asl_integrations(
    default_synth: Synth, asl_text: str
) -> None:
    (machine,) = default_synth.resources("AWS::StepFunctions::StateMachine").values()
    role_id = machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    granted: set[str] = set()
    for policy in default_synth.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for statement in _statements(policy["Properties"]["PolicyDocument"]):
            actions = statement["Action"]
            actions = actions if isinstance(actions, list) else [actions]
            if statement["Resource"] == "*":
                # only the log-delivery and X-Ray APIs, which have no resource-level scope
                assert all(a.startswith(("logs:", "xray:")) for a in actions), actions
            else:
                granted.update(actions)
    assert granted == required_actions(json.loads(asl_text))


def test_lambdas_run_our_handlers_with_the_shared_environment(default_synth: Synth) -> None:
    template = Template.from_json(default_synth.template)
    env_keys = {ENV_TABLE, ENV_BUCKET, ENV_TOPIC_ARN, ENV_CONTROL_QUEUE_URL}
    for handler in (AGGREGATE_HANDLER, CONTROL_HANDLER):
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Runtime": "python3.12",
                "Environment": {
                    "Variables": Match.object_like(dict.fromkeys(env_keys, Match.any_value()))
                },
            },
        )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": AGGREGATE_HANDLER,
            "ReservedConcurrentExecutions": 1,
        },
    )


def test_event_sources_retry_bisect_and_report_partial_failures(default_synth: Synth) -> None:
    template = Template.from_json(default_synth.template)
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [Match.any_value(), "StreamArn"]},
            "BatchSize": Match.any_value(),
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 5,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
        },
    )
    control_id = _logical_id(
        default_synth, "AWS::SQS::Queue", QueueName=Deployment().control_queue_name
    )
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [control_id, "Arn"]},
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
    )


def test_only_writes_of_update_items_invoke_the_aggregate_function(default_synth: Synth) -> None:
    # GIVEN the stream's event source mapping
    (mapping,) = [
        r["Properties"]
        for r in default_synth.resources("AWS::Lambda::EventSourceMapping").values()
        if "StreamArn" in json.dumps(r["Properties"]["EventSourceArn"])
    ]
    # THEN it has one filter: INSERT and MODIFY (a silo's re-put) events whose sort key
    # starts with 'UPDATE#' (by hand, in Lambda's pattern syntax); heartbeats invoke
    # nothing, and the server's own writes are in the server table, which has no stream
    (only,) = mapping["FilterCriteria"]["Filters"]
    assert json.loads(only["Pattern"]) == {
        "eventName": ["INSERT", "MODIFY"],
        "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "UPDATE#"}]}}},
    }
    # AND it is the pattern the embedded stack's stream pump applies
    assert json.loads(only["Pattern"]) == AGGREGATE_STREAM_FILTER


def test_control_timeouts_leave_three_attempts_within_the_waits(
    default_synth: Synth, asl_text: str
) -> None:
    # GIVEN the control function, its queue and the ASL's waits for its answer
    (function,) = [
        r["Properties"]
        for r in default_synth.resources("AWS::Lambda::Function").values()
        if r["Properties"]["Handler"] == CONTROL_HANDLER
    ]
    queue_id = _logical_id(
        default_synth, "AWS::SQS::Queue", QueueName=Deployment().control_queue_name
    )
    queue = default_synth.template["Resources"][queue_id]["Properties"]
    states = json.loads(asl_text)["States"]
    timeout, visibility = function["Timeout"], queue["VisibilityTimeout"]
    waits = {name: states[name]["TimeoutSeconds"] for name in ("CloseRound", "Finalize")}
    # THEN the values are the shared ones: 60 s, 6 x 60 s (Lambda's rule), 900 s
    assert (timeout, visibility) == (CONTROL_TIMEOUT_S, CONTROL_VISIBILITY_S) == (60, 360)
    assert waits == {"CloseRound": CONTROL_WAIT_S, "Finalize": CONTROL_WAIT_S}
    assert visibility >= 6 * timeout
    # AND a failed message (back after `visibility`) gets two more attempts, each of which
    # may run to the timeout, before the wait ends: 2 * 360 + 60 = 780 <= 900
    assert (CONTROL_ATTEMPTS_WITHIN_WAIT - 1) * visibility + timeout <= CONTROL_WAIT_S
    assert CONTROL_ATTEMPTS_WITHIN_WAIT == 3
    # AND the causes the waits record name the wait they had
    assert f"within {CONTROL_WAIT_S} s" in states["CloseRoundUnanswered"]["Parameters"]["cause.$"]
    assert f"within {CONTROL_WAIT_S} s" in states["FinalizeUnanswered"]["Parameters"]["cause.$"]


def test_server_roles_use_star_only_where_aws_has_no_resource_scope(default_synth: Synth) -> None:
    unscoped = {"dynamodb:ListStreams"} | {
        f"xray:{a}"
        for a in (
            "PutTraceSegments",
            "PutTelemetryRecords",
            "GetSamplingRules",
            "GetSamplingTargets",
        )
    }
    for policy in default_synth.resources("AWS::IAM::Policy").values():
        for statement in _statements(policy["Properties"]["PolicyDocument"]):
            if statement["Resource"] != "*":
                continue
            actions = statement["Action"]
            for action in actions if isinstance(actions, list) else [actions]:
                assert action in unscoped or action.startswith("logs:"), action


def test_outputs_give_clients_and_operators_what_they_need(default_synth: Synth) -> None:
    outputs = default_synth.template["Outputs"]
    for key in (
        "Region",
        "AccountId",
        "Prefix",
        "BucketName",
        "TableName",
        "ServerTableName",
        "TopicArn",
        "ControlQueueUrl",
        "StateMachineArn",
    ):
        assert key in outputs
    # no output per client: a client's queue and role follow from the names
    assert not [k for k in outputs if k.startswith(("ClientQueueUrl", "ClientRoleArn"))]
    assert all("Outputs" not in t for t in default_synth.nested.values())


def test_client_queues_and_roles_carry_the_names_a_client_computes(default_synth: Synth) -> None:
    # GIVEN the default stack (prefix fedasync) WHEN its client resources are read
    spec = Deployment()
    roles = {
        r["Properties"]["RoleName"]
        for r in default_synth.all_resources("AWS::IAM::Role").values()
        if "RoleName" in r["Properties"]
    }
    queues = {
        r["Properties"]["QueueName"]
        for r in default_synth.all_resources("AWS::SQS::Queue").values()
    }
    # THEN each client's role and queue are named as Deployment computes them, which for
    # hospital-a in account 111122223333 of eu-west-1 gives, written out by hand:
    for client in DEFAULT_CLIENTS:
        assert spec.client_role_name(client) in roles
        assert spec.client_queue_name(client) in queues
    eu = Deployment(region="eu-west-1")
    assert eu.client_role_arn("hospital-a", "111122223333") == (
        "arn:aws:iam::111122223333:role/fedasync-client-hospital-a"
    )
    assert eu.client_queue_url("hospital-a", "111122223333") == (
        "https://sqs.eu-west-1.amazonaws.com/111122223333/fedasync-client-hospital-a"
    )


def test_the_outputs_file_reads_back_as_the_deployment(
    default_synth: Synth, tmp_path: Path
) -> None:
    # GIVEN the outputs as `cdk deploy --outputs-file` writes them: each output's value
    # (here the template's token, rendered as text stands in for the deployed value)
    outputs = {k: json.dumps(v["Value"]) for k, v in default_synth.template["Outputs"].items()}
    outputs["Prefix"] = "fedasync"  # a plain string in the template, not a token
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"FedasyncStack": {**outputs, "TopicShards": "1"}}))
    # WHEN the CLI loads it
    deployment = Deployment.load(path)
    # THEN every coordinate the stack publishes lands on its Deployment field
    for field in ("bucket", "table", "topic_arn", "control_queue_url", "state_machine_arn"):
        assert getattr(deployment, field) == outputs[CDK_OUTPUT_IDS[field]], field
    assert deployment.topic_shards == 1
    # AND a silo's queue is found by the naming rule: no output per client
    assert deployment.client_queue_urls == {}
    assert deployment.client_queue_name("hospital-a") == "fedasync-client-hospital-a"
