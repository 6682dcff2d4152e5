"""The notice path (SNS topic shards → one queue per client) and the server's own queues.

A topic takes at most 200 subscriptions with a filter policy (SNS's default quota), so
notices go out on `spec.topic_shards` topics, each client subscribed to the shard its id
hashes to (`fedasync.resources.topic_shard`); the server publishes to the shards that hold
a notice's recipients.

Every queue is created here, at deploy time, never by code at run time, so that every
queue has its dead-letter queue, its encryption and its TLS-only policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedasync.deployment import Deployment
from fedasync.resources import notice_filter_policy, shard_topic, topic_shard

DLQ_RETENTION = Duration.days(14)
# The embedded stack (fedasync.local.provision) uses the same values.
# A client works on a notice for a whole round (download, train, upload) and extends the
# message's visibility while it heartbeats; this is only the first lease.
CLIENT_VISIBILITY = Duration.minutes(5)
# After this many receives without a delete a message is poison (or its consumer keeps
# crashing on it) and goes to the dead-letter queue for an operator to read.
MAX_RECEIVE_COUNT = 5


@dataclass(frozen=True)
class ClientQueue:
    client_id: str
    queue: sqs.Queue
    dlq: sqs.Queue


def _queue(
    scope: Construct,
    construct_id: str,
    name: str,
    *,
    dead_letter: sqs.Queue | None = None,
    max_receives: int = MAX_RECEIVE_COUNT,
    visibility: Duration | None = None,
    retention: Duration | None = None,
) -> sqs.Queue:
    # SSE-SQS rather than a customer key: SNS can deliver into it and clients can read
    # it without any KMS grant, which keeps every client role to its queue ARN alone.
    return sqs.Queue(
        scope,
        construct_id,
        queue_name=name,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        visibility_timeout=visibility,
        retention_period=retention,
        dead_letter_queue=(
            sqs.DeadLetterQueue(queue=dead_letter, max_receive_count=max_receives)
            if dead_letter is not None
            else None
        ),
        removal_policy=RemovalPolicy.DESTROY,
    )


class Messaging(Construct):
    """Topic + per-client queues, the control queue, the stream's failure queue."""

    def __init__(
        self, scope: Construct, construct_id: str, *, spec: Deployment, control_visibility: Duration
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic_key = kms.Key(
            self,
            "TopicKey",
            description=f"{spec.prefix}: encrypts global-model notices at rest in SNS",
            enable_key_rotation=True,
        )
        self.topics = tuple(
            sns.Topic(
                self,
                shard_topic("GlobalModelReady", i),
                topic_name=shard_topic(spec.topic_name, i),
                master_key=self.topic_key,
                enforce_ssl=True,
            )
            for i in range(spec.topic_shards)
        )
        self.topic = self.topics[0]  # its ARN names every shard's (`shard_topic`)
        control_dlq = _queue(self, "ControlDlq", spec.control_dlq_name, retention=DLQ_RETENTION)
        self.control_queue = _queue(
            self,
            "Control",
            spec.control_queue_name,
            dead_letter=control_dlq,
            max_receives=MAX_RECEIVE_COUNT,
            visibility=control_visibility,
        )
        self.control_dlq = control_dlq
        self.aggregate_failures = self._failure_queue(spec)
        # the clients' queues live in nested stacks (infra/client_stacks.py), made by
        # `client_queue` below

    def _failure_queue(self, spec: Deployment) -> sqs.Queue:
        queue = _queue(
            self, "AggregateFailures", f"{spec.prefix}-aggregate-failures", retention=DLQ_RETENTION
        )
        Validations.of(queue).acknowledge(
            Acknowledgment(
                id="AwsSolutions-SQS3",
                reason="This queue is the on-failure destination of the aggregator's stream "
                "mapping, i.e. it already is the dead-letter queue; records wait here for an "
                "operator, there is no further queue to redrive them to.",
            )
        )
        return queue


def client_queue(
    scope: Construct, spec: Deployment, client_id: str, topics: tuple[sns.ITopic, ...]
) -> ClientQueue:
    """A client's queue and dead-letter queue, subscribed to its topic shard (the
    subscription and the queue policy that lets SNS deliver land in `scope`'s stack)."""
    scope = Construct(scope, f"Client-{client_id}")
    dlq = _queue(scope, "Dlq", spec.client_dlq_name(client_id), retention=DLQ_RETENTION)
    queue = _queue(
        scope,
        "Queue",
        spec.client_queue_name(client_id),
        dead_letter=dlq,
        max_receives=MAX_RECEIVE_COUNT,
        visibility=CLIENT_VISIBILITY,
    )
    filter_policy = {
        attribute: sns.SubscriptionFilter.string_filter(allowlist=values)
        for attribute, values in notice_filter_policy(client_id).items()
    }
    topic = topics[topic_shard(client_id, len(topics))]
    # What `SqsSubscription` makes, written out: it would also make the nested stack
    # depend on its parent (the topic's), which CDK refuses.
    queue.add_to_resource_policy(
        iam.PolicyStatement(
            principals=[iam.ServicePrincipal("sns.amazonaws.com")],
            actions=["sqs:SendMessage"],
            resources=[queue.queue_arn],
            conditions={"ArnEquals": {"aws:SourceArn": topic.topic_arn}},
        )
    )
    subscription = sns.Subscription(
        scope,
        "Subscription",
        topic=topic,
        endpoint=queue.queue_arn,
        protocol=sns.SubscriptionProtocol.SQS,
        raw_message_delivery=True,
        filter_policy=filter_policy,
    )
    subscription.node.add_dependency(queue)  # the queue policy lets SNS deliver first
    return ClientQueue(client_id=client_id, queue=queue, dlq=dlq)
