"""`--stack-config` reads our own stack JSON and `cdk deploy --outputs-file` as it is."""

from __future__ import annotations

import json

import pytest

from fedasync.core.errors import ConfigError
from fedasync.ops.taskctl import StackConfig


def test_cdk_outputs_file_is_read_as_a_stack_config(tmp_path):
    outputs = {
        "FedasyncStack": {
            "Region": "eu-west-1",
            "TableName": "fedasync-table",
            "BucketName": "fedasyncstack-modelsbucket-1x2y3z",
            "TopicArn": "arn:aws:sns:eu-west-1:111122223333:fedasync-global-model-ready",
            "StateMachineArn": "arn:aws:states:eu-west-1:111122223333:stateMachine:fedasync-fl-task",
            "ClientQueueUrlHospitalA": "https://sqs.eu-west-1.amazonaws.com/1/fedasync-client-hospital-a",
        }
    }
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    cfg = StackConfig.load(path, endpoint_url=None, region=None)
    assert (cfg.region, cfg.table, cfg.bucket) == (
        "eu-west-1",
        "fedasync-table",
        "fedasyncstack-modelsbucket-1x2y3z",
    )
    assert cfg.state_machine_arn is not None
    assert cfg.state_machine_arn.endswith(":stateMachine:fedasync-fl-task")
    assert cfg.endpoint_url is None


def test_a_stack_config_without_names_is_a_clear_error(tmp_path):
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"region": "eu-west-1"}))
    with pytest.raises(ConfigError, match="is invalid"):
        StackConfig.load(path, endpoint_url=None, region=None)
