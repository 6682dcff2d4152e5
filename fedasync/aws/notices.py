"""SNS port: global-model notices, one publish per topic shard that holds a recipient.

Each client's queue is subscribed to one shard (`topic_shard`) with a filter policy on
its own id (`notice_filter_policy`), so a notice names only the recipients of its shard.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Protocol

import structlog

from fedasync.aws.session import AwsContext
from fedasync.core.messages import GlobalModelNotice
from fedasync.core.secagg.notice import SecAggNotice
from fedasync.resources import NOTICE_FILTER_ATTRIBUTE, shard_topic, topic_shard

log = structlog.get_logger()


class Notices(Protocol):
    async def publish(
        self, notice: GlobalModelNotice | SecAggNotice, client_ids: tuple[str, ...]
    ) -> int: ...


class SnsNotices:
    """`Notices` over aioboto3's SNS client, on a deployment's topic shards."""

    def __init__(self, aws: AwsContext, topic_arn: str, topic_shards: int = 1) -> None:
        self._aws = aws
        self.topic_arn = topic_arn  # shard 0's; the others are `shard_topic(topic_arn, i)`
        self.topic_shards = topic_shards

    async def publish(
        self, notice: GlobalModelNotice | SecAggNotice, client_ids: tuple[str, ...]
    ) -> int:
        """Send `notice` to the queues of `client_ids`; the number of publishes (0: no
        recipient, nothing sent)."""
        shards: dict[int, list[str]] = {}
        for client_id in client_ids:
            shards.setdefault(topic_shard(client_id, self.topic_shards), []).append(client_id)
        if not shards:
            log.info("notice.no_recipients", task_name=notice.task_name)
            return 0
        sns = await self._aws.sns()
        await asyncio.gather(
            *(
                sns.publish(
                    TopicArn=shard_topic(self.topic_arn, shard),
                    Message=notice.to_json(),
                    MessageAttributes={
                        NOTICE_FILTER_ATTRIBUTE: {
                            "DataType": "String.Array",
                            "StringValue": json.dumps(recipients),
                        },
                        "task_name": {"DataType": "String", "StringValue": notice.task_name},
                    },
                )
                for shard, recipients in sorted(shards.items())
            )
        )
        return len(shards)


async def find_topics(aws: AwsContext, topic_name: str) -> dict[int, str]:
    """The account's topics named `topic_name` (shard 0) or `{topic_name}-{i}`, by shard."""
    shard_of = re.compile(rf"^{re.escape(topic_name)}(?:-([1-9][0-9]*))?$")
    found: dict[int, str] = {}
    async for page in (await aws.sns()).get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            match = shard_of.match(topic["TopicArn"].rsplit(":", 1)[-1])
            if match:
                found[int(match.group(1) or 0)] = topic["TopicArn"]
    return found
