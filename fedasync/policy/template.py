"""The synthesized CloudFormation template's IAM policies, per principal, as statements.

A `Resolver` turns the intrinsics the template's policies use (`Ref`, `Fn::GetAtt` Arn /
StreamArn, `Fn::Join`, `Fn::Sub` without variables maps) into concrete ARNs, naming each
resource as the embedded stack names it (`fedasync.resources.Deployment`): a table or a
queue by its physical name, the models bucket by `spec.bucket` (CloudFormation
would pick one on AWS), a stream ARN as `.../stream/*` (its label is a deploy-time date).

Principals are named as the call audit names them:
`client:<id>` (the client's role), `aggregate`, `control` (the Lambda functions' roles),
`state-machine` (the state machine's role), `operator` (the operator policy, if any).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fedasync.deployment import Deployment
from fedasync.policy.evaluate import Statement

ACCOUNT = "123456789012"  # moto's default account, and the embedded stack's
CLIENT_PREFIX = "client:"
OPERATOR_POLICY_DESCRIPTION = "fedasync operator:"


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Resolver:
    def __init__(
        self,
        template: Mapping[str, Any],
        spec: Deployment,
        account: str = ACCOUNT,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.resources: Mapping[str, Any] = template["Resources"]
        self.spec, self.account, self.region = spec, account, spec.region
        # a nested stack's parameters, as its parent passes them (already resolved)
        self.parameters: Mapping[str, Any] = parameters or {}
        self.pseudo = {
            "AWS::Partition": "aws",
            "AWS::AccountId": account,
            "AWS::Region": spec.region,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": spec.prefix,
        }

    def _props(self, logical_id: str) -> Mapping[str, Any]:
        props: Mapping[str, Any] = self.resources[logical_id].get("Properties", {})
        return props

    def _name(self, logical_id: str, prop: str) -> str:
        return str(self._props(logical_id).get(prop, logical_id))

    def bucket_name(self, logical_id: str) -> str:
        if "VersioningConfiguration" in self._props(logical_id):
            return self.spec.bucket  # the models bucket
        return f"{self.spec.prefix}-{logical_id.lower()}"

    def arn(self, logical_id: str) -> str:
        kind = self.resources[logical_id]["Type"]
        where = f"{self.region}:{self.account}"
        rules = {
            "AWS::S3::Bucket": lambda: f"arn:aws:s3:::{self.bucket_name(logical_id)}",
            "AWS::SQS::Queue": lambda: f"arn:aws:sqs:{where}:{self._name(logical_id, 'QueueName')}",
            "AWS::DynamoDB::Table": lambda: (
                f"arn:aws:dynamodb:{where}:table/{self._name(logical_id, 'TableName')}"
            ),
            "AWS::KMS::Key": lambda: f"arn:aws:kms:{where}:key/{logical_id}",
            "AWS::Logs::LogGroup": lambda: f"arn:aws:logs:{where}:log-group:{logical_id}:*",
            "AWS::IAM::Role": lambda: f"arn:aws:iam::{self.account}:role/{logical_id}",
            "AWS::Lambda::Function": lambda: (
                f"arn:aws:lambda:{where}:function:{self._name(logical_id, 'FunctionName')}"
            ),
        }
        if kind not in rules:
            raise KeyError(f"no ARN rule for {kind} ({logical_id})")
        return rules[kind]()

    def ref(self, logical_id: str) -> str:
        if logical_id in self.pseudo:
            return self.pseudo[logical_id]
        if logical_id in self.parameters:
            return str(self.parameters[logical_id])
        kind = self.resources[logical_id]["Type"]
        where = f"{self.region}:{self.account}"
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{where}:{self._name(logical_id, 'TopicName')}"
        if kind == "AWS::StepFunctions::StateMachine":
            name = self._name(logical_id, "StateMachineName")
            return f"arn:aws:states:{where}:stateMachine:{name}"
        if kind == "AWS::SQS::Queue":
            name = self._name(logical_id, "QueueName")
            return f"https://sqs.{self.region}.amazonaws.com/{self.account}/{name}"
        if kind == "AWS::S3::Bucket":
            return self.bucket_name(logical_id)
        return self._name(logical_id, "Name")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            return self.ref(node["Ref"])
        if "Fn::GetAtt" in node:
            logical_id, attribute = node["Fn::GetAtt"]
            if attribute == "StreamArn":
                return self.arn(logical_id) + "/stream/*"
            if attribute != "Arn":
                raise KeyError(f"no rule for Fn::GetAtt {attribute} ({logical_id})")
            return self.arn(logical_id)
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(str(self.resolve(i)) for i in items)
        if "Fn::Sub" in node and isinstance(node["Fn::Sub"], str):
            return re.sub(
                r"\$\{([A-Za-z0-9:]+)\}", lambda m: self._sub(m.group(1)), node["Fn::Sub"]
            )
        return {k: self.resolve(v) for k, v in node.items()}

    def _sub(self, name: str) -> str:
        logical_id, _, attribute = name.partition(".")
        if attribute:
            return str(self.resolve({"Fn::GetAtt": [logical_id, attribute]}))
        return self.ref(logical_id)


def _documents_of(template: Mapping[str, Any], role_id: str) -> list[Mapping[str, Any]]:
    resources = template["Resources"]
    role = resources[role_id]["Properties"]
    if role.get("ManagedPolicyArns"):
        raise ValueError(f"role {role_id} carries managed policies, which the audit cannot read")
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    for resource in resources.values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            props = resource["Properties"]
            if {"Ref": role_id} in props.get("Roles", []):
                documents.append(props["PolicyDocument"])
    return documents


def principal_roles(template: Mapping[str, Any], spec: Deployment) -> dict[str, str]:
    """Principal name -> the logical id of the role it runs as."""
    resources = template["Resources"]
    roles: dict[str, str] = {}
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            name = str(props.get("FunctionName", ""))
            principal = name.removeprefix(f"{spec.prefix}-")
            roles[principal] = props["Role"]["Fn::GetAtt"][0]
        elif resource["Type"] == "AWS::StepFunctions::StateMachine":
            roles["state-machine"] = props["RoleArn"]["Fn::GetAtt"][0]
        elif resource["Type"] == "AWS::IAM::Role":
            match = re.match(r"fedasync client ([^:]+):", str(props.get("Description", "")))
            if match:
                roles[CLIENT_PREFIX + match.group(1)] = logical_id
    return roles


def principal_statements(
    template: Mapping[str, Any],
    spec: Deployment,
    account: str = ACCOUNT,
    nested: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, tuple[Statement, ...]]:
    """Every principal's statements: the inline and attached policies of its role, in the
    template and in its nested stacks' templates (`nested`: by the logical id of their
    `AWS::CloudFormation::Stack` resource; the clients' roles live there)."""
    resolver = Resolver(template, spec, account)
    out = _role_statements(template, spec, resolver)
    for logical_id, child in (nested or {}).items():
        given = template["Resources"][logical_id].get("Properties", {}).get("Parameters", {})
        values = {name: resolver.resolve(value) for name, value in given.items()}
        child_resolver = Resolver(child, spec, account, parameters=values)
        for principal, statements in _role_statements(child, spec, child_resolver).items():
            if principal in out:
                raise ValueError(f"principal {principal!r} has a role in two templates")
            out[principal] = statements
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::ManagedPolicy" and str(
            props.get("Description", "")
        ).startswith(OPERATOR_POLICY_DESCRIPTION):
            out["operator"] = tuple(
                Statement.from_json(resolver.resolve(s), origin="operator")
                for s in _listify(props["PolicyDocument"]["Statement"])
            )
    return out


def _role_statements(
    template: Mapping[str, Any], spec: Deployment, resolver: Resolver
) -> dict[str, tuple[Statement, ...]]:
    return {
        principal: tuple(
            Statement.from_json(resolver.resolve(s), origin=principal)
            for doc in _documents_of(template, role_id)
            for s in _listify(doc["Statement"])
        )
        for principal, role_id in principal_roles(template, spec).items()
    }
