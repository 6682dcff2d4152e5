"""Helpers shared by the CDK tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TRAINER_ARN = "arn:aws:iam::111122223333:role/silo-trainer"

# Only for the time before stepfunctions/fl_task.asl.json exists: one wait-for-token
# state on the control queue and one table update, with both placeholders.
MINIMAL_ASL: dict[str, Any] = {
    "StartAt": "Open",
    "States": {
        "Open": {
            "Type": "Task",
            "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            "Parameters": {
                "QueueUrl": "${ControlQueueUrl}",
                "MessageBody": {"t.$": "$$.Task.Token"},
            },
            "TimeoutSeconds": 60,
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Close"}],
            "Next": "Close",
        },
        "Close": {
            "Type": "Task",
            "Resource": "arn:aws:states:::dynamodb:updateItem",
            "Parameters": {"TableName": "${TableName}", "Key": {}},
            "End": True,
        },
    },
}


def _node_major() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().lstrip("v").split(".")[0] or None


def require_cdk() -> None:
    """Skip the calling module unless Node and the cdk extra are both there."""
    major = _node_major()
    if major is None:
        pytest.skip("node is not on PATH (aws-cdk-lib runs on jsii/Node)", allow_module_level=True)
    # jsii prints a banner for Node releases past their end of life; it is noise here.
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", major)
    pytest.importorskip("aws_cdk", reason="the cdk extra is not installed")
    pytest.importorskip("cdk_nag", reason="the cdk extra is not installed")


@dataclass(frozen=True)
class Synth:
    """One synthesised app: the app, its stack, the template as a dict, the out dir, and
    the clients' nested stacks' templates (by their logical id in the template)."""

    app: Any
    stack: Any
    template: dict[str, Any]
    outdir: Path
    nested: dict[str, dict[str, Any]] = field(default_factory=dict)

    def all_resources(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        """`resources`, across the template and its nested stacks' templates."""
        found = self.resources(cfn_type)
        for template in self.nested.values():
            found.update({k: r for k, r in template["Resources"].items() if r["Type"] == cfn_type})
        return found

    def resources(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == cfn_type}
