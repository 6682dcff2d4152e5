"""The operator's managed policy: what `fedasync task` and `fedasync events` call.

Attach it to whoever operates the stack (a role, a group); its statements are
`fedasync.policy.definitions.operator_statements`, which the embedded stack's operator
principal holds too.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.policy import definitions
from fedasync.policy.template import OPERATOR_POLICY_DESCRIPTION
from infra.nag import acknowledge_wildcard_resource


class OperatorAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        server_table: dynamodb.ITable,
        topics: tuple[sns.ITopic, ...],
        state_machine: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        executions = (
            f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}:execution:"
            f"{spec.state_machine_name}:*"
        )
        arns = definitions.StackArns(
            table=table.table_arn,
            server_table=server_table.table_arn,
            stream="",
            bucket=bucket.bucket_arn,
            topic=topics[0].topic_arn,
            topics=tuple(t.topic_arn for t in topics),
            control_queue="",
            aggregate_failures="",
            state_machine=state_machine.state_machine_arn,
            executions=executions,
        )
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description=f"{OPERATOR_POLICY_DESCRIPTION} start, watch, stop and export "
            f"tasks of {spec.prefix}",
            document=iam.PolicyDocument(
                statements=[
                    iam.PolicyStatement.from_json(s) for s in definitions.operator_statements(arns)
                ]
            ),
        )
        acknowledge_wildcard_resource(
            self.policy,
            bucket.arn_for_objects("*"),
            "The operator seeds each task's global model and reads its final model; tasks "
            "are created at run time, so the bucket's object ARN is the narrowest fixed scope.",
        )
        acknowledge_wildcard_resource(
            self.policy,
            executions,
            "Executions are named after tasks, created at run time; the scope is this "
            "state machine's executions only.",
        )
