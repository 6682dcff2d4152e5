"""Where models and records live: the models bucket (and its access-log bucket), the
silos' inbox table and the server table."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.resources import TABLE_PARTITION_KEY, TABLE_SORT_KEY, TTL_ATTRIBUTE
from infra.config import LOCAL_UPDATE_TAG_KEY, LOCAL_UPDATE_TAG_VALUE

ACCESS_LOG_RETENTION = Duration.days(365)
NONCURRENT_VERSION_RETENTION = Duration.days(30)


class Storage(Construct):
    """S3 for weights, DynamoDB for records: both kept when the stack is deleted."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: Deployment,
        local_update_expiry_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = self._access_log_bucket()
        self.bucket = self._models_bucket(local_update_expiry_days)
        self.table = self._table(spec)
        self.server_table = self._server_table(spec)

    def _access_log_bucket(self) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging delivers only to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=ACCESS_LOG_RETENTION)],
            removal_policy=RemovalPolicy.RETAIN,
        )
        Validations.of(bucket).acknowledge(
            Acknowledgment(
                id="AwsSolutions-S1",
                reason="This bucket is the server-access-log target of the models bucket; "
                "logging it into itself would log its own log deliveries without end.",
            )
        )
        return bucket

    def _models_bucket(self, local_update_expiry_days: int) -> s3.Bucket:
        return s3.Bucket(
            self,
            "Models",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="models/",
            lifecycle_rules=[
                # Local updates are inputs to one aggregation; the global versions and the
                # final model are the record and are kept.
                s3.LifecycleRule(
                    id="expire-local-updates",
                    tag_filters={LOCAL_UPDATE_TAG_KEY: LOCAL_UPDATE_TAG_VALUE},
                    expiration=Duration.days(local_update_expiry_days),
                ),
                # A client killed mid-upload leaves parts that are billed but never seen.
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=NONCURRENT_VERSION_RETENTION,
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _server_table(self, spec: Deployment) -> dynamodb.Table:
        """What the server decides (TASK, ROUND, verdicts): no silo role is granted it."""
        return dynamodb.Table(
            self,
            "ServerTable",
            table_name=spec.server_table,
            partition_key=dynamodb.Attribute(
                name=TABLE_PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(name=TABLE_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _table(self, spec: Deployment) -> dynamodb.Table:
        """The inbox: what silos write (update records, heartbeats), streamed."""
        return dynamodb.Table(
            self,
            "Table",
            table_name=spec.table,
            partition_key=dynamodb.Attribute(
                name=TABLE_PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(name=TABLE_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            # The aggregator needs the record as written; old images would only add cost.
            stream=dynamodb.StreamViewType.NEW_IMAGE,
            time_to_live_attribute=TTL_ATTRIBUTE,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # AWS-managed key: encrypted at rest, usable via DynamoDB by the account's
            # principals that IAM allows, without key-policy grants per client role.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
