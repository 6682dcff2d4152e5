"""`--stack-config` reads our own stack JSON and `cdk deploy --outputs-file` as it is: both
become one `Deployment`, as do the handlers' environment and a bare prefix."""

from __future__ import annotations

import json

import pytest

from fedasync.aws.session import Credentials
from fedasync.core.errors import ConfigError
from fedasync.deployment import Deployment
from fedasync.resources import ClientSpec


def test_cdk_outputs_file_is_read_as_a_deployment(tmp_path):
    # GIVEN `cdk deploy --outputs-file` as CDK writes it
    outputs = {
        "FedasyncStack": {
            "Region": "eu-west-1",
            "TableName": "fedasync-table",
            "BucketName": "fedasyncstack-modelsbucket-1x2y3z",
            "TopicArn": "arn:aws:sns:eu-west-1:111122223333:fedasync-global-model-ready",
            "TopicShards": "2",
            "ControlQueueUrl": "https://sqs.eu-west-1.amazonaws.com/1/fedasync-control",
            "StateMachineArn": "arn:aws:states:eu-west-1:111122223333:stateMachine:fedasync-fl-task",
            "ServerTableName": "fedasync-table-server",
            "Prefix": "fedasync",
            "AccountId": "111122223333",
        }
    }
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    # WHEN it is loaded
    cfg = Deployment.load(path, endpoint_url=None, region=None)
    # THEN every output lands on its field
    assert (cfg.region, cfg.table, cfg.bucket) == (
        "eu-west-1",
        "fedasync-table",
        "fedasyncstack-modelsbucket-1x2y3z",
    )
    assert cfg.state_machine_arn is not None
    assert cfg.state_machine_arn.endswith(":stateMachine:fedasync-fl-task")
    assert (cfg.topic_shards, cfg.control_queue_url) == (
        2,
        "https://sqs.eu-west-1.amazonaws.com/1/fedasync-control",
    )
    assert cfg.server_table == "fedasync-table-server"
    # AND no output per client: a silo's queue follows from the prefix, region and account
    assert cfg.client_queue_urls == {}
    assert cfg.client_queue_url("hospital-a", "111122223333") == (
        "https://sqs.eu-west-1.amazonaws.com/111122223333/fedasync-client-hospital-a"
    )
    assert cfg.endpoint_url is None


def test_a_stack_config_without_names_is_a_clear_error(tmp_path):
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"region": "eu-west-1"}))
    with pytest.raises(ConfigError, match="is invalid"):
        Deployment.load(path, endpoint_url=None, region=None)


def test_names_derive_from_the_prefix_and_the_server_table_is_beside_the_inbox():
    # GIVEN only a prefix and three silos
    d = Deployment(prefix="lab", clients=tuple(ClientSpec(client_id=c) for c in "abc"))
    # THEN every name is the one the embedded stack and the CDK app give
    assert (d.table, d.server_table, d.bucket) == ("lab-table", "lab-table-server", "lab-models")
    assert (d.topic_name, d.control_queue_name, d.state_machine_name) == (
        "lab-global-model-ready",
        "lab-control",
        "lab-fl-task",
    )
    assert d.client_queue_name("a") == "lab-client-a"
    assert d.topic_shards == 1  # 3 clients fit one topic's 200 filter policies


def test_the_handler_environment_round_trips():
    # GIVEN a resolved deployment
    d = Deployment(
        prefix="lab",
        endpoint_url="http://127.0.0.1:1",
        topic_arn="arn:aws:sns:us-east-1:1:lab-global-model-ready",
        topic_shards=3,
        control_queue_url="http://127.0.0.1:1/q/lab-control",
    )
    # WHEN a handler reads the environment the stack sets
    back = Deployment.from_env(d.handler_env())
    # THEN it knows the same coordinates
    fields = ("endpoint_url", "region", "table", "server_table", "bucket", "topic_arn",
              "topic_shards", "control_queue_url")  # fmt: skip
    assert {f: getattr(back, f) for f in fields} == {f: getattr(d, f) for f in fields}


def test_a_saved_deployment_loads_with_its_keys(tmp_path):
    # GIVEN what `local up` writes: names, a queue URL and a silo's key
    d = Deployment(
        prefix="lab",
        client_queue_urls={"a": "http://q/lab-client-a"},
        principals={"client:a": Credentials("AKIA1", "s3cr3t")},
    )
    path = tmp_path / "stack.json"
    d.save(path)
    # WHEN it is loaded again THEN the same deployment comes back, key included
    back = Deployment.load(path)
    assert back.credentials("client:a") == Credentials("AKIA1", "s3cr3t")
    assert back.client_queue_urls == d.client_queue_urls
    # AND the key never shows in the model's repr (logs)
    assert "s3cr3t" not in repr(back)


def test_a_coordinate_only_the_running_stack_knows_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not say its state_machine_arn"):
        Deployment(prefix="lab").require("state_machine_arn")
