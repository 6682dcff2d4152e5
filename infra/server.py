"""The server's Lambda functions, their roles and their event sources.

aggregate: DynamoDB stream → `AGGREGATE_HANDLER`; one concurrent execution so a task's
updates apply in the order the stream delivers them.
control:   control queue → `CONTROL_HANDLER` (the messages the state machine sends).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from aws_cdk import Annotations, Aws, Duration, Size
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.limits import AGGREGATE_LIMITS, CONTROL_LIMITS, EPHEMERAL_MB
from fedasync.policy import definitions
from fedasync.resources import (
    AGGREGATE_HANDLER,
    AGGREGATE_STREAM_FILTER,
    CONTROL_HANDLER,
    CONTROL_VISIBILITY_S,
    ENV_BUCKET,
    ENV_CONTROL_QUEUE_URL,
    ENV_SERVER_TABLE,
    ENV_TABLE,
    ENV_TOPIC_ARN,
    ENV_TOPIC_SHARDS,
)
from infra import bundle
from infra.messaging import Messaging
from infra.nag import acknowledge, acknowledge_wildcard_resource

RUNTIME = lambda_.Runtime(f"python{bundle.LAMBDA_PYTHON_VERSION}", lambda_.RuntimeFamily.PYTHON)
# fedasync.resources explains the values: visibility = 6 x timeout (Lambda's rule for SQS
# sources), and the ASL's CloseRound/Finalize waits leave room for three attempts.
# Timeouts and memory sizes are fedasync.limits': the embedded stack enforces the same.
CONTROL_TIMEOUT = Duration.seconds(int(CONTROL_LIMITS.timeout_s))
CONTROL_QUEUE_VISIBILITY = Duration.seconds(CONTROL_VISIBILITY_S)
AGGREGATE_TIMEOUT = Duration.seconds(int(AGGREGATE_LIMITS.timeout_s))
STREAM_BATCH_SIZE = 10
STREAM_RETRIES = 5

# The explicit grants (table, bucket, topic, task callbacks) are
# `fedasync.policy.definitions.server_statements`; the embedded stack grants the same.
TABLE_ACTIONS = definitions.TABLE_ACTIONS
OBJECT_ACTIONS = definitions.OBJECT_ACTIONS


def lambda_code(scope: Construct, bundle_dir: Path) -> lambda_.Code:
    """The built bundle if there is one; else our source alone, with a synth warning."""
    if bundle.is_built(bundle_dir):
        return lambda_.Code.from_asset(str(bundle_dir))
    Annotations.of(scope).add_warning_v2(
        "fedasync:LambdaBundleNotBuilt",
        f"{bundle_dir} is not built: the Lambda asset holds only fedasync/ and "
        "server_lambdas/, without numpy & co. Run `python infra/bundle.py` before "
        "`cdk deploy`.",
    )
    staging = Path(tempfile.mkdtemp(prefix="fedasync-lambda-src-"))
    atexit.register(shutil.rmtree, staging, ignore_errors=True)
    bundle.stage_sources(staging)
    bundle.normalise(staging)
    return lambda_.Code.from_asset(str(staging))


class ServerFunctions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        code: lambda_.Code,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        server_table: dynamodb.ITable,
        messaging: Messaging,
        state_machine: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        self._spec = spec
        self._bucket, self._table, self._messaging = bucket, table, messaging
        self._server_table = server_table
        self._state_machine = state_machine
        environment = {
            ENV_TABLE: table.table_name,
            ENV_SERVER_TABLE: server_table.table_name,
            ENV_BUCKET: bucket.bucket_name,
            ENV_TOPIC_ARN: messaging.topic.topic_arn,
            ENV_TOPIC_SHARDS: str(len(messaging.topics)),
            ENV_CONTROL_QUEUE_URL: messaging.control_queue.queue_url,
        }
        self.aggregate = self._function(
            "Aggregate",
            f"{spec.prefix}-aggregate",
            AGGREGATE_HANDLER,
            code,
            environment,
            timeout=AGGREGATE_TIMEOUT,
            memory_mb=AGGREGATE_LIMITS.memory_mb,
            reserved_concurrency=1,
        )
        self.aggregate.add_event_source(
            sources.DynamoEventSource(
                table,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=STREAM_BATCH_SIZE,
                bisect_batch_on_error=True,
                retry_attempts=STREAM_RETRIES,
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(messaging.aggregate_failures),
                # only INSERTs of update items invoke it; the embedded pump applies the same
                filters=[lambda_.FilterCriteria.filter(AGGREGATE_STREAM_FILTER)],
            )
        )
        acknowledge(
            self.aggregate.role or self.aggregate,
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams, added by the stream event source, has no resource-level "
            "permissions; every other stream action is scoped to the table's stream ARN.",
        )
        self.control = self._function(
            "Control",
            f"{spec.prefix}-control",
            CONTROL_HANDLER,
            code,
            environment,
            timeout=CONTROL_TIMEOUT,
            memory_mb=CONTROL_LIMITS.memory_mb,
            reserved_concurrency=None,
        )
        self.control.add_event_source(
            sources.SqsEventSource(
                messaging.control_queue, batch_size=5, report_batch_item_failures=True
            )
        )
        self._grant_history(self.control, messaging.control_queue.queue_arn)

    def _grant_history(self, function: lambda_.Function, control_queue: str) -> None:
        """A control message is acted on only if the task's execution sent it, which the
        handler reads in the execution's history (fedasync/server/control.py); a failed
        one is made visible again soon (server_lambdas/control.py)."""
        role = function.role
        if role is None:  # every function here has its own role (see _function)
            raise ValueError(f"{function.node.path} has no role to grant the history to")
        # the ARN written out from the machine's name: the call audit reads it as it is
        executions = (
            f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}:execution:"
            f"{self._spec.state_machine_name}:*"
        )
        arns = definitions.StackArns(
            table="", stream="", bucket="", topic="", control_queue=control_queue,
            aggregate_failures="", state_machine="", executions=executions,
        )  # fmt: skip
        for statement in definitions.control_statements(arns):
            role.add_to_policy(iam.PolicyStatement.from_json(statement))
        acknowledge_wildcard_resource(
            role,
            executions,
            "The control handler reads the history of this state machine's executions "
            "(execution:<machine>:*); executions start at run time, one per task.",
        )

    def _function(
        self,
        construct_id: str,
        name: str,
        handler: str,
        code: lambda_.Code,
        environment: dict[str, str],
        *,
        timeout: Duration,
        memory_mb: int,
        reserved_concurrency: int | None,
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, f"{construct_id}Logs", retention=logs.RetentionDays.ONE_YEAR
        )
        # An explicit role instead of the default one: the default attaches the managed
        # AWSLambdaBasicExecutionRole, whose log permissions span every log group.
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{name}: its log group, the table, the bucket, the topic, task callbacks",
        )
        log_group.grant_write(role)
        self._grant_server_access(role)
        function = lambda_.Function(
            self,
            construct_id,
            function_name=name,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            handler=handler,
            code=code,
            role=role,
            environment=environment,
            timeout=timeout,
            memory_size=memory_mb,
            ephemeral_storage_size=Size.mebibytes(EPHEMERAL_MB),
            reserved_concurrent_executions=reserved_concurrency,
            log_group=log_group,
        )
        acknowledge(
            function,
            "AwsSolutions-L1",
            f"Pinned to python{bundle.LAMBDA_PYTHON_VERSION} on purpose: infra/bundle.py "
            "installs binary wheels (numpy, pydantic-core) for exactly that CPython ABI; "
            "the runtime and LAMBDA_PYTHON_VERSION move together, in one change.",
        )
        return function

    def _grant_server_access(self, role: iam.Role) -> None:
        objects = self._bucket.arn_for_objects("*")
        arns = definitions.StackArns(
            table=self._table.table_arn,
            server_table=self._server_table.table_arn,
            stream=self._table.table_stream_arn or "",
            bucket=self._bucket.bucket_arn,
            topic=self._messaging.topic.topic_arn,
            topics=tuple(t.topic_arn for t in self._messaging.topics),
            control_queue=self._messaging.control_queue.queue_arn,
            aggregate_failures=self._messaging.aggregate_failures.queue_arn,
            state_machine=self._state_machine.state_machine_arn,
        )
        for statement in definitions.server_statements(arns):
            role.add_to_policy(iam.PolicyStatement.from_json(statement))
        # Publishing to a KMS-encrypted topic needs the topic key, and only that key.
        self._messaging.topic_key.grant(role, "kms:GenerateDataKey", "kms:Decrypt")
        acknowledge_wildcard_resource(
            role,
            objects,
            "The server reads and writes every task's prefix ({task}/global, /local, "
            "/buffer, /final.safetensors); tasks are created at run time, so the bucket's "
            "object ARN is the narrowest fixed scope.",
        )
