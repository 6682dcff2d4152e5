"""The fedasync server stack: storage, messaging, state machine, functions, client roles.

Outputs carry what `fedasync task start` (bucket, table, state machine) and
`fedasync client run` (region, bucket, table, the client's queue URL and role ARN)
need; `cdk deploy --outputs-file outputs.json` writes them to a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aws_cdk import Aws, CfnOutput, Stack
from constructs import Construct

from infra.bundle import BUNDLE_DIR
from infra.client_access import ClientRoles
from infra.config import DeploymentConfig
from infra.messaging import Messaging
from infra.operator_access import OperatorAccess
from infra.orchestration import Orchestration
from infra.server import CONTROL_QUEUE_VISIBILITY, ServerFunctions, lambda_code
from infra.storage import Storage

# Output keys: a client's outputs are `{CLIENT_QUEUE_URL}{Id}` / `{CLIENT_ROLE_ARN}{Id}`
# with Id the client id in PascalCase (outputs allow only letters and digits).
OUTPUT_REGION = "Region"
OUTPUT_BUCKET = "BucketName"
OUTPUT_TABLE = "TableName"
OUTPUT_SERVER_TABLE = "ServerTableName"
OUTPUT_TOPIC = "TopicArn"
OUTPUT_TOPIC_SHARDS = "TopicShards"
OUTPUT_CONTROL_QUEUE = "ControlQueueUrl"
OUTPUT_STATE_MACHINE = "StateMachineArn"
OUTPUT_OPERATOR_POLICY = "OperatorPolicyArn"
CLIENT_QUEUE_URL = "ClientQueueUrl"
CLIENT_ROLE_ARN = "ClientRoleArn"


def output_id(client_id: str) -> str:
    """`hospital-a` -> `HospitalA`; ids that collide this way are refused at synth."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", client_id) if part)


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
        self._check_output_ids(spec.client_ids)
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
        self.client_roles = ClientRoles(
            self,
            "ClientRoles",
            clients=spec.clients,
            queues=self.messaging.clients,
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

    @staticmethod
    def _check_output_ids(client_ids: tuple[str, ...]) -> None:
        seen: dict[str, str] = {}
        for client_id in client_ids:
            key = output_id(client_id)
            if key in seen:
                raise ValueError(
                    f"client ids {seen[key]!r} and {client_id!r} both give output id {key!r}; "
                    "rename one"
                )
            seen[key] = client_id

    def _outputs(self) -> None:
        def out(key: str, value: str, description: str) -> None:
            CfnOutput(self, key, value=value, description=description)

        out(OUTPUT_REGION, Aws.REGION, "Region of every resource below")
        out(OUTPUT_BUCKET, self.storage.bucket.bucket_name, "Models bucket (S3)")
        out(OUTPUT_TABLE, self.storage.table.table_name, "Inbox table: what silos write (DynamoDB)")
        out(
            OUTPUT_SERVER_TABLE,
            self.storage.server_table.table_name,
            "Server table: what the server decides (DynamoDB)",
        )
        out(OUTPUT_TOPIC, self.messaging.topic.topic_arn, "Global-model notices (SNS), shard 0")
        out(
            OUTPUT_TOPIC_SHARDS,
            str(len(self.messaging.topics)),
            "Notice topic shards: shard i > 0 is the topic ARN above with the suffix -i",
        )
        out(OUTPUT_CONTROL_QUEUE, self.messaging.control_queue.queue_url, "Control queue (SQS)")
        out(
            OUTPUT_STATE_MACHINE,
            self.orchestration.state_machine.state_machine_arn,
            "FL task state machine; `fedasync task start` starts executions of it",
        )
        out(
            OUTPUT_OPERATOR_POLICY,
            self.operator.policy.managed_policy_arn,
            "Managed policy to attach to whoever runs `fedasync task` / `fedasync events`",
        )
        roles = {access.client_id: access.role for access in self.client_roles.roles}
        for queue in self.messaging.clients:
            key = output_id(queue.client_id)
            out(
                f"{CLIENT_QUEUE_URL}{key}",
                queue.queue.queue_url,
                f"Notice queue of client {queue.client_id}",
            )
            out(
                f"{CLIENT_ROLE_ARN}{key}",
                roles[queue.client_id].role_arn,
                f"Role client {queue.client_id} assumes",
            )
