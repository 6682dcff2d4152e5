"""Topic shards: a topic takes 200 filtered subscriptions (SNS's default quota), so the
notice path spreads the clients over as few topics as keep every one within it."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from fedasync.deployment import Deployment
from fedasync.resources import shard_topic, topic_shard, topic_shard_count


def test_a_client_shard_is_the_documented_hash_of_its_id():
    # the first 8 bytes of SHA-256(id), big-endian, modulo the shard count
    digest = hashlib.sha256(b"silo-0").hexdigest()
    assert topic_shard("silo-0", 7) == int(digest[:16], 16) % 7
    assert topic_shard("silo-0", 1) == 0


@pytest.mark.parametrize("n", [0, 1, 199, 200, 201, 250, 399, 400, 401, 1000, 2500])
def test_the_fewest_shards_that_keep_each_topic_within_200(n):
    ids = [f"silo-{i}" for i in range(n)]
    shards = topic_shard_count(ids)
    loads = Counter(topic_shard(c, shards) for c in ids)
    assert max(loads.values(), default=0) <= 200
    assert shards >= max(1, math.ceil(n / 200))
    if shards > max(1, math.ceil(n / 200)):  # one shard fewer would overfill one
        fewer = Counter(topic_shard(c, shards - 1) for c in ids)
        assert max(fewer.values()) > 200


def test_up_to_200_clients_keep_the_one_topic_of_earlier_stacks():
    spec = Deployment(prefix="p")
    assert topic_shard_count([f"c{i}" for i in range(200)]) == 1
    assert spec.topic_shards == 1
    assert shard_topic(spec.topic_name, 0) == "p-global-model-ready"
    assert shard_topic("arn:aws:sns:us-east-1:1:p-global-model-ready", 2) == (
        "arn:aws:sns:us-east-1:1:p-global-model-ready-2"
    )
