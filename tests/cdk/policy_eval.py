"""A small, independent IAM evaluator for the synthesised client policies.

It resolves the template's intrinsics to concrete ARNs in a fake account, then decides a
request the way IAM does for one identity policy: allowed iff some Allow matches and no
Deny matches; `*` and `?` in actions and resources are globs where `*` also crosses `/`.

Conditions are handled in two modes:
- exact (a request `context` is given): the operators our policies use are evaluated;
  any other operator raises, so a new condition cannot be silently ignored;
- over-approximate (`context=None`): every Allow counts as if its conditions held and a
  conditional Deny as if it did not apply. "Denied" in this mode is a proof that no
  request context whatsoever gets the action through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::URLSuffix": "amazonaws.com",
}


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Resolver:
    """Intrinsics → strings, with each resource named by its physical name or logical id."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.resources: dict[str, dict[str, Any]] = template["Resources"]

    def _name(self, logical_id: str, prop: str) -> str:
        return str(self.resources[logical_id].get("Properties", {}).get(prop, logical_id))

    def arn(self, logical_id: str) -> str:
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{logical_id.lower()}"
        if kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self._name(logical_id, 'QueueName')}"
        if kind == "AWS::DynamoDB::Table":
            return (
                f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self._name(logical_id, 'TableName')}"
            )
        if kind == "AWS::KMS::Key":
            return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{logical_id}"
        if kind == "AWS::Logs::LogGroup":
            return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{logical_id}:*"
        if kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{logical_id}"
        raise KeyError(f"no ARN rule for {kind} ({logical_id})")

    def ref(self, logical_id: str) -> str:
        if logical_id in PSEUDO:
            return PSEUDO[logical_id]
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{REGION}:{ACCOUNT}:{self._name(logical_id, 'TopicName')}"
        if kind == "AWS::StepFunctions::StateMachine":
            name = self._name(logical_id, "StateMachineName")
            return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self._name(logical_id, 'QueueName')}"
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
                return self.arn(logical_id) + "/stream/1970-01-01T00:00:00.000"
            if attribute != "Arn":
                raise KeyError(f"no rule for GetAtt {attribute}")
            return self.arn(logical_id)
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(str(self.resolve(i)) for i in items)
        return {k: self.resolve(v) for k, v in node.items()}


def _glob(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.fullmatch(regex, value, flags) is not None


def _condition_holds(conditions: dict[str, Any], context: dict[str, Any]) -> bool:
    for operator, clauses in conditions.items():
        for key, expected in clauses.items():
            allowed = [str(v) for v in _listify(expected)]
            present = key in context
            actual = [str(v) for v in _listify(context.get(key, []))]
            if operator == "StringEquals":
                ok = present and len(actual) == 1 and actual[0] in allowed
            elif operator == "StringEqualsIfExists":
                ok = not present or (len(actual) == 1 and actual[0] in allowed)
            elif operator == "ForAllValues:StringEquals":
                ok = all(a in allowed for a in actual)
            elif operator == "Null":
                ok = present != (allowed == ["true"])
            elif operator == "Bool":
                ok = present and actual == allowed
            else:
                raise NotImplementedError(f"condition operator {operator} is not modelled")
            if not ok:
                return False
    return True


@dataclass(frozen=True)
class Policy:
    statements: tuple[dict[str, Any], ...]

    @classmethod
    def from_documents(cls, documents: list[dict[str, Any]], resolver: Resolver) -> Policy:
        statements = [resolver.resolve(s) for doc in documents for s in _listify(doc["Statement"])]
        return cls(tuple(statements))

    def _matches(self, statement: dict[str, Any], action: str, resource: str) -> bool:
        actions = _listify(statement.get("Action", []))
        resources = _listify(statement.get("Resource", []))
        return any(_glob(a, action, case_sensitive=False) for a in actions) and any(
            _glob(r, resource, case_sensitive=True) for r in resources
        )

    def allows(self, action: str, resource: str, context: dict[str, Any] | None = None) -> bool:
        allowed = False
        for statement in self.statements:
            if not self._matches(statement, action, resource):
                continue
            conditions = statement.get("Condition")
            if statement["Effect"] == "Deny":
                applies = conditions is None or (
                    context is not None and _condition_holds(conditions, context)
                )
                if applies:
                    return False
            elif conditions is None or context is None or _condition_holds(conditions, context):
                allowed = True
        return allowed
