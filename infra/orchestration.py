"""The FL task state machine: the ASL file, inlined, with every placeholder substituted.

The role grants exactly the service integrations the ASL's Task states call
(`infra.asl_check.required_actions`), each on the one resource that service may touch:
SQS actions on the control queue, DynamoDB actions on the table. An integration with
any other service fails the synth until someone decides what it may touch.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.policy import definitions
from fedasync.resources import ASL_PLACEHOLDERS, substitute_asl
from infra.asl_check import required_actions
from infra.nag import acknowledge

# What each service the ASL may integrate with is allowed to touch.
GRANTABLE_SERVICES = ("sqs", "dynamodb")
_PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def substitutions(table: dynamodb.ITable, control_queue: sqs.IQueue) -> dict[str, str]:
    """One value per placeholder `fedasync.resources` declares; a new one fails here."""
    values = {"ServerTableName": table.table_name, "ControlQueueUrl": control_queue.queue_url}
    if set(values) != set(ASL_PLACEHOLDERS):
        raise ValueError(
            f"ASL placeholders {sorted(ASL_PLACEHOLDERS)} but the CDK app fills {sorted(values)}"
        )
    return values


def parse_definition(definition: str) -> dict[str, Any]:
    """The ASL as data, after proving it uses exactly the declared placeholders."""
    substitute_asl(definition, {name: "x" for name in ASL_PLACEHOLDERS})
    parsed: dict[str, Any] = json.loads(_PLACEHOLDER_RE.sub("x", definition))
    return parsed


def actions_by_service(definition: dict[str, Any]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for action in sorted(required_actions(definition)):
        service = action.split(":")[0]
        if service not in GRANTABLE_SERVICES:
            raise ValueError(
                f"the ASL calls {action}; the state machine role grants only "
                f"{GRANTABLE_SERVICES} integrations: add a scoped grant in infra/orchestration.py"
            )
        grouped.setdefault(service, []).append(action)
    return grouped


class Orchestration(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        definition: str,
        table: dynamodb.ITable,
        control_queue: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_YEAR)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description=f"{spec.state_machine_name}: the SDK integrations its ASL calls",
        )
        arns = definitions.StackArns(
            table="",
            server_table=table.table_arn,
            stream="",
            bucket="",
            topic="",
            control_queue=control_queue.queue_arn,
            aggregate_failures="",
            state_machine="",
        )
        actions = required_actions(parse_definition(definition))
        for statement in definitions.state_machine_statements(actions, arns):
            self.role.add_to_policy(iam.PolicyStatement.from_json(statement))
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=spec.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            # from_string inlines the text as DefinitionString; from_file would make it an
            # S3 asset, which the issue rules out.
            definition_body=sfn.DefinitionBody.from_string(definition),
            definition_substitutions=substitutions(table, control_queue),
            role=self.role,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                # Execution data carries task tokens (the callback payloads); a token in a
                # log is a credential anyone with logs:GetLogEvents could redeem.
                include_execution_data=False,
            ),
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            "Step Functions needs logs:*LogDelivery/DescribeResourcePolicies/PutResourcePolicy "
            "and xray:PutTraceSegments/PutTelemetryRecords/GetSampling*; these APIs have no "
            "resource-level permissions, so AWS requires Resource '*'.",
        )
