"""Client configuration: defaults name the stack's resources; unsafe pacing is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from client.config import MIN_PART_BYTES, ClientConfig
from client.worker import training_seed, update_id_for
from fedasync.core.messages import GlobalModelNotice, UpdateRecord
from fedasync.deployment import Deployment


def test_resource_names_follow_the_stack_prefix():
    # GIVEN only a prefix WHEN the config is built THEN the names are the stack's
    cfg = ClientConfig(task_name="digits", client_id="bank-3", prefix="demo")
    assert (cfg.deployment.bucket, cfg.deployment.table, cfg.queue_name) == (
        "demo-models",
        "demo-table",
        "demo-client-bank-3",
    )
    assert cfg.queue_url is None
    # GIVEN flat names THEN they fill the deployment, the queue URL under the client's id
    given = ClientConfig(task_name="d", client_id="c", bucket="mine", queue_url="http://q/c")
    assert given.deployment.bucket == "mine"
    assert given.deployment.client_queue_urls == {"c": "http://q/c"}
    assert given.queue_url == "http://q/c"


def test_a_deployment_is_the_one_source_of_a_silos_coordinates():
    # GIVEN a deployment as `local up` resolves it
    where = Deployment(prefix="p", endpoint_url="http://127.0.0.1:5000", bucket="b",
                       client_queue_urls={"c": "http://q/c"})  # fmt: skip
    # WHEN a silo's config carries it, and a flat flag overrides one name
    cfg = ClientConfig(task_name="d", client_id="c", deployment=where, table="t")
    # THEN every coordinate comes from it, the flag wins where given
    assert (cfg.deployment.endpoint_url, cfg.deployment.bucket, cfg.deployment.table) == (
        "http://127.0.0.1:5000",
        "b",
        "t",
    )
    assert cfg.queue_url == "http://q/c"


def test_heartbeat_ttl_defaults_to_three_beats():
    assert ClientConfig(task_name="d", client_id="c", heartbeat_interval_s=10).ttl_s == 30
    assert ClientConfig(task_name="d", client_id="c", heartbeat_ttl_s=7).ttl_s == 7


def test_visibility_must_outlast_the_heartbeat_that_renews_it():
    with pytest.raises(ValidationError, match="must exceed heartbeat_interval_s"):
        ClientConfig(task_name="d", client_id="c", heartbeat_interval_s=30, visibility_timeout_s=30)


def test_parts_below_the_s3_minimum_are_refused():
    with pytest.raises(ValidationError):
        ClientConfig(task_name="d", client_id="c", part_size=MIN_PART_BYTES - 1)


def _notice(version: int, round_id: int | None, seq: int | None = None) -> GlobalModelNotice:
    return GlobalModelNotice(
        task_name="digits",
        mode="sync" if round_id is not None else "async",
        version=version,
        round_id=round_id,
        seq=seq,
        s3_key="k",
        sha256="ab" * 32,
        size_bytes=1,
    )


def test_update_ids_are_stable_per_client_and_version_and_valid_record_keys():
    # sync: keyed by round (the sort key adds the client)
    assert update_id_for("bank-3", _notice(4, 4)) == "r00000004"
    # async: the sort key is the update id alone, so it names the client
    assert update_id_for("bank-3", _notice(4, None)) == "bank-3-b00000004"
    # async with the server's go-ahead count: a second update on the same version differs
    assert update_id_for("bank-3", _notice(4, None, 9)) == "bank-3-b00000004-s00000009"
    assert update_id_for("bank-3", _notice(4, None, 10)) != update_id_for(
        "bank-3", _notice(4, None, 9)
    )
    longest = "c" * 48
    record = UpdateRecord(
        task_name="digits",
        client_id=longest,
        update_id=update_id_for(longest, _notice(7, None, 99_999_999)),
        base_version=7,
        s3_key="k",
        sha256="ab" * 32,
        size_bytes=1,
        num_examples=1,
    )
    assert record.sk == f"UPDATE#{longest}-b00000007-s99999999"


def test_training_seed_depends_on_seed_client_version_and_go_ahead_only():
    assert training_seed(0, "a", 1) == training_seed(0, "a", 1)
    assert training_seed(0, "a", 1, 3) == training_seed(0, "a", 1, 3)
    assert (
        len({training_seed(0, "a", 1), training_seed(0, "a", 1, 3), training_seed(0, "a", 1, 4)})
        == 3
    )
    assert (
        len(
            {
                training_seed(0, "a", 1),
                training_seed(1, "a", 1),
                training_seed(0, "b", 1),
                training_seed(0, "a", 2),
            }
        )
        == 4
    )
