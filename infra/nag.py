"""cdk-nag (v3, CDK `Validations`) wiring: the pack, and precise acknowledgements.

cdk-nag v3 reports each wildcard of a policy as its own finding,
`AwsSolutions-IAM5[Resource::<Logical.Arn>/*]`, and an acknowledgement must name that
exact finding. We compute the name from the same token the policy uses, so a reason
always sits next to the one wildcard it excuses, never next to the whole rule.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Acknowledgment, App, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def add_nag(app: App) -> None:
    """Run the AwsSolutions pack at synth; an unacknowledged finding fails the synth."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def flatten_reference(node: Any) -> str:
    """cdk-nag's flattening of a CloudFormation value (Ref/GetAtt/Join/Sub) to a string."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return str(delimiter).join(flatten_reference(item) for item in items)
        if "Fn::Sub" in node:
            return flatten_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_reference(resource)}.{flatten_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def acknowledge_wildcard_resource(scope: IConstruct, resource: str, reason: str) -> None:
    """Acknowledge IAM5 for one wildcard resource (an ARN string or token) on `scope`."""
    flat = flatten_reference(Stack.of(scope).resolve(resource))
    acknowledge(scope, f"AwsSolutions-IAM5[Resource::{flat}]", reason)
