"""Contract of the SQS and SNS ports, against moto over HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest

from fedasync.aws.queues import SnsNotices, SqsQueues
from fedasync.aws.session import AwsContext
from fedasync.deployment import Deployment
from fedasync.local.provision import provision
from fedasync.resources import NOTICE_FILTER_ATTRIBUTE, ClientSpec


@pytest.fixture
async def endpoints(aws: AwsContext, prefix: str) -> Deployment:
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in "abc"))
    return await provision(aws, spec)


async def test_send_receive_delete(aws: AwsContext, endpoints: Deployment) -> None:
    queues = SqsQueues(aws)
    url = endpoints.client_queue_urls["a"]
    sent = await queues.send(url, '{"kind": "x"}')
    [got] = await queues.receive(url, wait_s=1)
    assert (got.message_id, got.body, got.receive_count) == (sent, '{"kind": "x"}', 1)
    assert await queues.delete(url, got.receipt_handle)
    assert await queues.receive(url, wait_s=0) == []


async def test_long_poll_returns_as_soon_as_a_message_arrives(
    aws: AwsContext, endpoints: Deployment
) -> None:
    # GIVEN a client long-polling an empty queue for up to 10 s
    queues = SqsQueues(aws)
    url = endpoints.client_queue_urls["b"]
    started = time.monotonic()
    poll = asyncio.create_task(queues.receive(url, wait_s=10))
    await asyncio.sleep(0.3)
    # WHEN a message is sent meanwhile
    await queues.send(url, "hello")
    # THEN the poll returns it well before the 10 s
    [got] = await poll
    assert got.body == "hello"
    assert time.monotonic() - started < 5


async def test_visibility_can_be_ended_and_the_message_comes_back(
    aws: AwsContext, endpoints: Deployment
) -> None:
    queues = SqsQueues(aws)
    url = endpoints.client_queue_urls["c"]
    await queues.send(url, "train")
    [first] = await queues.receive(url, wait_s=1, visibility_s=60)
    # WHEN the client gives up (visibility 0) THEN the message is received again, counted
    assert await queues.change_visibility(url, first.receipt_handle, 0)
    [again] = await queues.receive(url, wait_s=1)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)


async def test_a_stale_receipt_is_an_outcome_not_a_crash(
    aws: AwsContext, endpoints: Deployment
) -> None:
    queues = SqsQueues(aws)
    url = endpoints.client_queue_urls["a"]
    assert not await queues.delete(url, "not-a-receipt-handle")
    assert not await queues.change_visibility(url, "not-a-receipt-handle", 30)


async def test_a_notice_reaches_exactly_the_clients_it_names(
    aws: AwsContext, endpoints: Deployment
) -> None:
    # GIVEN clients a, b, c each subscribed with their filter policy
    notices, queues = SnsNotices(aws), SqsQueues(aws)
    # WHEN a notice names a and c
    await notices.publish(endpoints.topic_arn, '{"version": 1}', ["c", "a", "a"])
    # THEN a and c each get the raw message once, with the String.Array attribute; b nothing
    got = {
        c: await queues.receive(u, wait_s=0, max_messages=10)
        for c, u in endpoints.client_queue_urls.items()
    }
    assert {c: [m.body for m in ms] for c, ms in got.items()} == {
        "a": ['{"version": 1}'],
        "b": [],
        "c": ['{"version": 1}'],
    }
    assert got["a"][0].message_attributes[NOTICE_FILTER_ATTRIBUTE] == '["a", "c"]'


async def test_a_notice_to_nobody_is_not_sent(aws: AwsContext, endpoints: Deployment) -> None:
    assert await SnsNotices(aws).publish(endpoints.topic_arn, "x", []) is None
