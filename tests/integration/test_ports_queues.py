"""Contract of the SQS and SNS ports (queues, notices on topic shards): the aioboto3
implementations against moto over HTTP, and the in-memory ones the unit tiers run on,
held to the same tests (`Fanout`: a stack's queues and its topic, either way)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import pytest

from fedasync.aws.memory import MemoryNotices, MemoryQueues
from fedasync.aws.notices import Notices, SnsNotices, find_topics
from fedasync.aws.queues import Queues, SqsQueues
from fedasync.aws.session import AwsContext
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment
from fedasync.local.provision import provision
from fedasync.resources import NOTICE_FILTER_ATTRIBUTE, ClientSpec, topic_shard


@pytest.fixture
async def endpoints(aws: AwsContext, prefix: str) -> Deployment:
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in "abc"))
    return await provision(aws, spec)


@dataclass
class Fanout:
    queues: Queues
    notices: Notices
    urls: dict[str, str]  # client id -> its queue
    name_of: dict[str, str]  # client id -> its queue's name


@pytest.fixture
def sqs_fanout(aws: AwsContext, endpoints: Deployment) -> Fanout:
    return Fanout(
        SqsQueues(aws),
        SnsNotices(aws, endpoints.topic_arn, endpoints.topic_shards),
        dict(endpoints.client_queue_urls),
        {c: endpoints.client_queue_name(c) for c in "abc"},
    )


@pytest.fixture(params=["aws", "memory"])
def fanout(request: pytest.FixtureRequest) -> Fanout:
    if request.param == "aws":
        found: Fanout = request.getfixturevalue("sqs_fanout")
        return found
    queues = MemoryQueues()
    urls = {c: queues.create(f"unit-client-{c}") for c in "abc"}
    notices = MemoryNotices(1, queues, urls)
    return Fanout(queues, notices, urls, {c: f"unit-client-{c}" for c in "abc"})


async def test_send_receive_delete(fanout: Fanout) -> None:
    queues = fanout.queues
    url = fanout.urls["a"]
    sent = await queues.send(url, '{"kind": "x"}')
    [got] = await queues.receive(url, wait_s=1)
    assert (got.message_id, got.body, got.receive_count) == (sent, '{"kind": "x"}', 1)
    assert await queues.delete(url, got.receipt_handle)
    assert await queues.receive(url, wait_s=0) == []


async def test_long_poll_returns_as_soon_as_a_message_arrives(fanout: Fanout) -> None:
    # GIVEN a client long-polling an empty queue for up to 10 s
    queues = fanout.queues
    url = fanout.urls["b"]
    started = time.monotonic()
    poll = asyncio.create_task(queues.receive(url, wait_s=10))
    await asyncio.sleep(0.3)
    # WHEN a message is sent meanwhile
    await queues.send(url, "hello")
    # THEN the poll returns it well before the 10 s
    [got] = await poll
    assert got.body == "hello"
    assert time.monotonic() - started < 5


async def test_visibility_can_be_ended_and_the_message_comes_back(fanout: Fanout) -> None:
    queues = fanout.queues
    url = fanout.urls["c"]
    await queues.send(url, "train")
    [first] = await queues.receive(url, wait_s=1, visibility_s=60)
    # WHEN the client gives up (visibility 0) THEN the message is received again, counted
    assert await queues.change_visibility(url, first.receipt_handle, 0)
    [again] = await queues.receive(url, wait_s=1)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)


async def test_a_stale_receipt_is_an_outcome_not_a_crash(fanout: Fanout) -> None:
    queues = fanout.queues
    url = fanout.urls["a"]
    assert not await queues.delete(url, "not-a-receipt-handle")
    assert not await queues.change_visibility(url, "not-a-receipt-handle", 30)


def notice(version: int) -> GlobalModelNotice:
    return GlobalModelNotice(task_name="digits", mode="async", version=version,
                             s3_key=f"digits/global/{version:08d}.safetensors",
                             sha256="0" * 64, size_bytes=1)  # fmt: skip


async def test_a_queue_is_found_by_name_or_not_at_all(fanout: Fanout) -> None:
    assert await fanout.queues.url_of(fanout.name_of["a"]) == fanout.urls["a"]
    assert await fanout.queues.url_of(fanout.name_of["a"].replace("-a", "-zed")) is None


async def test_a_notice_reaches_exactly_the_clients_it_names(fanout: Fanout) -> None:
    # GIVEN clients a, b, c each subscribed with their filter policy
    notices, queues = fanout.notices, fanout.queues
    # WHEN a notice names c and a
    sent = await notices.publish(notice(1), ("c", "a"))
    # THEN a and c each get the raw message once, with the String.Array attribute; b nothing
    got = {
        c: await queues.receive(u, wait_s=0, max_messages=10) for c, u in fanout.urls.items()
    }
    assert sent == 1
    assert {c: [m.body for m in ms] for c, ms in got.items()} == {
        "a": [notice(1).to_json()],
        "b": [],
        "c": [notice(1).to_json()],
    }
    assert got["a"][0].message_attributes[NOTICE_FILTER_ATTRIBUTE] == '["c", "a"]'
    assert got["a"][0].message_attributes["task_name"] == "digits"


async def test_a_notice_goes_to_each_recipients_shard(aws: AwsContext, prefix: str) -> None:
    # GIVEN a stack whose 3 clients are spread over 2 topic shards (forced: the quota would
    # need 400 clients); by SHA-256 of the id (first 8 bytes, big-endian, mod 2), a and e
    # are on shard 0 and d on shard 1
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in "ade"),
                      topic_shards=2)  # fmt: skip
    endpoints = await provision(aws, spec)
    oracle = {c: int.from_bytes(hashlib.sha256(c.encode()).digest()[:8], "big") % 2 for c in "ade"}
    assert {c: topic_shard(c, 2) for c in "ade"} == oracle == {"a": 0, "d": 1, "e": 0}
    # WHEN one notice names all three
    sent = await SnsNotices(aws, endpoints.topic_arn, 2).publish(notice(2), ("a", "d", "e"))
    # THEN two publishes went out, and each client got it once
    assert sent == 2
    queues = SqsQueues(aws)
    for url in endpoints.client_queue_urls.values():
        assert [m.body for m in await queues.receive(url, wait_s=0, max_messages=10)] == [
            notice(2).to_json()
        ]
    # AND the shards are found by name, as the operator's CLI looks them up
    assert await find_topics(aws, endpoints.topic_name) == {
        0: endpoints.topic_arn,
        1: f"{endpoints.topic_arn}-1",
    }


async def test_a_notice_to_nobody_is_not_sent(fanout: Fanout) -> None:
    assert await fanout.notices.publish(notice(1), ()) == 0
