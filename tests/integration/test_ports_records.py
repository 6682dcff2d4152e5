"""Contract of the DynamoDB records port, against moto over HTTP."""

from __future__ import annotations

import pytest

from fedasync.aws.records import (
    Check,
    DynamoRecords,
    Put,
    Update,
    deserialize_item,
    serialize_item,
)
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.errors import TaskNotFoundError
from fedasync.deployment import Deployment
from fedasync.local.provision import provision


@pytest.fixture
async def records(aws: AwsContext, prefix: str) -> DynamoRecords:
    endpoints = await provision(aws, Deployment(prefix=prefix))
    return DynamoRecords(aws, endpoints.table)


def test_plain_values_survive_the_dynamodb_encoding() -> None:
    item = {
        "alpha": 0.3,
        "n": 12,
        "nested": {"loss": [0.5, 1]},
        "raw": b"\x00\x01",
        "ok": True,
        "none": None,
        "name": "bank-1",
    }
    assert deserialize_item(serialize_item(item)) == item
    assert serialize_item({"alpha": 0.3})["alpha"] == {"N": "0.3"}


async def test_missing_task_is_task_not_found(records: DynamoRecords) -> None:
    with pytest.raises(TaskNotFoundError, match="'ghost'"):
        await records.get_task("ghost")


async def test_put_if_absent_applies_once_and_reads_nothing_back(
    records: DynamoRecords,
) -> None:
    # GIVEN an update record written once
    sk = keys.update_sk("bank-1", "u1", 0)
    first = await records.put(Put("digits", sk, {"num_examples": 10, "status": "accepted"}))
    # WHEN the same record is written again (a redelivered event)
    second = await records.put(Put("digits", sk, {"num_examples": 99}))
    # THEN the second write is refused as an outcome, not an exception, and nothing changed
    assert first.applied
    assert not second.applied
    # AND the refusal carries no item: a silo's role may not read one back (no ALL_OLD)
    assert second.item is None
    assert (await records.get("digits", sk) or {})["num_examples"] == 10


async def test_exists_answers_whether_a_record_is_there(records: DynamoRecords) -> None:
    # GIVEN one update record
    sk = keys.update_sk("bank-1", "u1", 0)
    await records.put(Put("digits", sk, {"num_examples": 10, "client_id": "bank-1"}))
    # WHEN a silo asks whether it (and another) exist
    # THEN the answers are True and False
    assert await records.exists("digits", sk)
    assert not await records.exists("digits", keys.update_sk("bank-1", "u2", 1))


async def test_version_counter_advances_only_from_the_expected_version(
    records: DynamoRecords,
) -> None:
    # GIVEN a TASK item at version 0
    await records.put(Put("digits", keys.TASK_SK, {"version": 0, "status": "RUNNING"}))
    # WHEN two writers both believe the version is 0
    winner = await records.update(
        Update(
            "digits", keys.TASK_SK, {"head_key": "v1"}, expected={"version": 0}, increment="version"
        )
    )
    loser = await records.update(
        Update(
            "digits",
            keys.TASK_SK,
            {"head_key": "v1-bis"},
            expected={"version": 0},
            increment="version",
        )
    )
    # THEN only the first applies; the second sees the item at version 1
    assert winner.applied and winner.item is not None
    assert (winner.item["version"], winner.item["head_key"]) == (1, "v1")
    assert not loser.applied
    assert loser.item is not None and loser.item["version"] == 1
    assert (await records.get_task("digits"))["head_key"] == "v1"


async def test_update_of_a_missing_item_is_refused_unless_upsert(records: DynamoRecords) -> None:
    refused = await records.update(Update("digits", keys.round_sk(0), {"closed": True}))
    upserted = await records.update(
        Update("digits", keys.round_sk(0), {"closed": True}, must_exist=None)
    )
    assert (refused.applied, upserted.applied) == (False, True)


async def test_query_returns_a_kind_of_item_in_key_order(records: DynamoRecords) -> None:
    for client in ("c", "a", "b"):
        await records.put(Put("digits", keys.update_sk(client, "x", 1), {"client_id": client}))
    await records.put(Put("digits", keys.update_sk("a", "x", 0), {"client_id": "a"}))
    await records.put(Put("digits", keys.TASK_SK, {}))
    await records.put(Put("other", keys.update_sk("z", "x", 1), {}))
    round_1 = await records.query("digits", f"{keys.UPDATE_PREFIX}{1:08d}#")
    everything = await records.query("digits")
    assert [i["client_id"] for i in round_1] == ["a", "b", "c"]
    assert len(everything) == 5


async def test_transaction_is_all_or_nothing_and_names_the_failed_write(
    records: DynamoRecords,
) -> None:
    # GIVEN a TASK item at version 3
    await records.put(Put("digits", keys.TASK_SK, {"version": 3}))
    # WHEN a transaction records an update and advances the version from a stale 2
    outcome = await records.transact(
        [
            Put("digits", keys.update_sk("a", "u9", None), {"staleness": 0}),
            Update("digits", keys.TASK_SK, {}, expected={"version": 2}, increment="version"),
        ]
    )
    # THEN nothing is written and the reasons point at the second write
    assert not outcome.applied
    assert outcome.reasons == ("None", "ConditionalCheckFailed")
    assert await records.get("digits", keys.update_sk("a", "u9", None)) is None
    # AND from the right version it applies in full
    ok = await records.transact(
        [
            Put("digits", keys.update_sk("a", "u9", None), {"staleness": 0}),
            Update("digits", keys.TASK_SK, {}, expected={"version": 3}, increment="version"),
            Check("digits", keys.round_sk(7), must_exist=False),
        ]
    )
    assert ok.applied
    assert (await records.get_task("digits"))["version"] == 4


async def test_server_reads_more_items_than_one_batch_takes_in_order(
    aws: AwsContext, prefix: str
) -> None:
    from fedasync.server.store import ServerStore, Where

    # GIVEN 230 update items (BatchGetItem takes 100 keys a call; moto enforces it)
    endpoints = await provision(aws, Deployment(prefix=prefix))
    records = DynamoRecords(aws, endpoints.table)
    present = [keys.update_sk(f"c{i:03d}", "", 0) for i in range(230)]
    for i, sk in enumerate(present):
        await records.put(Put("digits", sk, {"client_id": f"c{i:03d}", "num_examples": i}))
    store = ServerStore(aws, Where(table=endpoints.table, bucket=endpoints.bucket, topic_arn=""))
    # WHEN the server reads them in reverse, with 20 absent keys and a repeat mixed in
    absent = [keys.update_sk(f"x{i:03d}", "", 0) for i in range(20)]
    wanted = [*reversed(present), *absent, present[5]]
    got = await store.get_items("digits", wanted)
    # THEN every answer is at its key's position: item i holds num_examples i, absent is None
    assert [g["num_examples"] if g else None for g in got] == [
        *range(229, -1, -1),
        *([None] * 20),
        5,
    ]
