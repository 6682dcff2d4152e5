"""The fedasync server stack: storage, messaging, state machine, functions, client roles.

Outputs carry what `fedasync task start` (bucket, table, state machine) and
`fedasync client run` (region, bucket, table) need; `cdk deploy --outputs-file
outputs.json` writes them to a file. A client's queue URL and role ARN follow from the
prefix, its id, the region and the account (`Deployment.client_queue_url` /
`client_role_arn`); the clients live in nested stacks (infra/client_stacks.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import Aws, CfnOutput, Stack
from constructs import Construct

from fedasync.deployment import CDK_OUTPUT_IDS
from infra.bundle import BUNDLE_DIR
from infra.client_stacks import ClientStack, client_stacks
from infra.config import DeploymentConfig
from infra.messaging import Messaging
from infra.operator_access import OperatorAccess
from infra.orchestration import Orchestration
from infra.server import CONTROL_QUEUE_VISIBILITY, ServerFunctions, lambda_code
from infra.storage import Storage

# Output keys: the deployment's coordinates under the ids `fedasync.deployment` reads
# back (`Deployment.load` of `cdk deploy --outputs-file`, `CDK_OUTPUT_IDS`), and two more:
# no output per client (a client's queue and role follow from the prefix, the region and
# the account, which would otherwise cap a stack at ~80 clients).
OUTPUT_ACCOUNT = "AccountId"
OUTPUT_OPERATOR_POLICY = "OperatorPolicyArn"


class FedAsyncStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        asl_definition: str,
        bundle_dir: Path = BUNDLE_DIR,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        spec = config.spec
        self.spec = spec
        self.storage = Storage(
            self, "Storage", spec=spec, local_update_expiry_days=config.local_update_expiry_days
        )
        self.messaging = Messaging(
            self, "Messaging", spec=spec, control_visibility=CONTROL_QUEUE_VISIBILITY
        )
        self.orchestration = Orchestration(
            self,
            "Orchestration",
            spec=spec,
            definition=asl_definition,
            table=self.storage.server_table,
            control_queue=self.messaging.control_queue,
        )
        self.functions = ServerFunctions(
            self,
            "Server",
            spec=spec,
            code=lambda_code(self, bundle_dir),
            bucket=self.storage.bucket,
            table=self.storage.table,
            server_table=self.storage.server_table,
            messaging=self.messaging,
            state_machine=self.orchestration.state_machine,
        )
        self.client_stacks: tuple[ClientStack, ...] = client_stacks(
            self,
            spec=spec,
            topics=self.messaging.topics,
            bucket=self.storage.bucket,
            table=self.storage.table,
        )
        self.operator = OperatorAccess(
            self,
            "Operator",
            spec=spec,
            bucket=self.storage.bucket,
            table=self.storage.table,
            server_table=self.storage.server_table,
            topics=self.messaging.topics,
            state_machine=self.orchestration.state_machine,
        )
        self._outputs()

    def nested_templates(self, assembly_dir: str | Path) -> dict[str, dict[str, Any]]:
        """The synthesized template of each client nested stack, by the logical id of its
        `AWS::CloudFormation::Stack` resource in this stack's template."""
        return {
            self.get_logical_id(nested.nested_stack_resource): json.loads(
                (Path(assembly_dir) / nested.template_file).read_text(encoding="utf-8")
            )
            for nested in self.client_stacks
            if nested.nested_stack_resource is not None
        }

    def _deployment_outputs(self) -> dict[str, tuple[str, str]]:
        """The `Deployment` fields this stack fills, with their values and descriptions."""
        return {
            "region": (Aws.REGION, "Region of every resource below"),
            "prefix": (
                self.spec.prefix,
                "Name prefix: client c's queue is {Prefix}-client-c, "
                "its role {Prefix}-client-c (hashed past 64 characters)",
            ),
            "bucket": (self.storage.bucket.bucket_name, "Models bucket (S3)"),
            "table": (self.storage.table.table_name, "Inbox table: what silos write (DynamoDB)"),
            "server_table": (
                self.storage.server_table.table_name,
                "Server table: what the server decides (DynamoDB)",
            ),
            "topic_arn": (self.messaging.topic.topic_arn, "Global-model notices (SNS), shard 0"),
            "topic_shards": (
                str(len(self.messaging.topics)),
                "Notice topic shards: shard i > 0 is the topic ARN above with the suffix -i",
            ),
            "control_queue_url": (
                self.messaging.control_queue.queue_url,
                "Control queue (SQS)",
            ),
            "state_machine_arn": (
                self.orchestration.state_machine.state_machine_arn,
                "FL task state machine; `fedasync task start` starts executions of it",
            ),
        }

    def _outputs(self) -> None:
        def out(key: str, value: str, description: str) -> None:
            CfnOutput(self, key, value=value, description=description)

        for field, (value, description) in self._deployment_outputs().items():
            out(CDK_OUTPUT_IDS[field], value, description)
        out(
            OUTPUT_OPERATOR_POLICY,
            self.operator.policy.managed_policy_arn,
            "Managed policy to attach to whoever runs `fedasync task` / `fedasync events`",
        )
        out(
            OUTPUT_ACCOUNT,
            Aws.ACCOUNT_ID,
            "Account of every resource; with Prefix and Region "
            "a client computes its queue URL and role ARN",
        )
