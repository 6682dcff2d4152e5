"""Contract of the records port: the DynamoDB implementation against moto over HTTP, and
the in-memory one the server's unit tier runs on, held to the same tests."""

from __future__ import annotations

import pytest

from fedasync.aws.memory import MemoryRecords, MemoryTables, evaluate
from fedasync.aws.records import DynamoRecords, Records, deserialize_item, serialize_item
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.deployment import Deployment
from fedasync.local.provision import provision

IF_ABSENT = "attribute_not_exists(#sk)"


@pytest.fixture
async def dynamo_records(aws: AwsContext, prefix: str) -> DynamoRecords:
    endpoints = await provision(aws, Deployment(prefix=prefix))
    return DynamoRecords(aws, endpoints.table)


@pytest.fixture(params=["dynamodb", "memory"])
def records(request: pytest.FixtureRequest, prefix: str) -> Records:
    if request.param == "memory":
        return MemoryRecords(MemoryTables(), f"{prefix}-table")
    found: DynamoRecords = request.getfixturevalue("dynamo_records")
    return found


def item(task_name: str, sk: str, **fields: object) -> dict[str, object]:
    return {"task_name": task_name, "sk": sk, **fields}


def test_plain_values_survive_the_dynamodb_encoding() -> None:
    value = {
        "alpha": 0.3,
        "n": 12,
        "nested": {"loss": [0.5, 1]},
        "raw": b"\x00\x01",
        "ok": True,
        "none": None,
        "name": "bank-1",
    }
    assert deserialize_item(serialize_item(value)) == value
    assert serialize_item({"alpha": 0.3})["alpha"] == {"N": "0.3"}


async def test_a_missing_item_reads_as_none(records: Records) -> None:
    assert await records.get("ghost", keys.TASK_SK) is None


async def test_put_if_absent_applies_once(records: Records) -> None:
    # GIVEN an update record written once
    sk = keys.update_sk("bank-1", "u1", 0)
    first = await records.put(item("digits", sk, num_examples=10), IF_ABSENT)
    # WHEN the same record is written again (a redelivered event)
    second = await records.put(item("digits", sk, num_examples=99), IF_ABSENT)
    # THEN the second write is refused as an answer, not an exception, and nothing changed
    assert (first, second) == (True, False)
    assert (await records.get("digits", sk) or {})["num_examples"] == 10
    # AND the silo's spelling of the condition (no name placeholder) means the same
    assert not await records.put(item("digits", sk, num_examples=7), "attribute_not_exists(sk)")


async def test_exists_answers_whether_a_record_is_there(records: Records) -> None:
    # GIVEN one update record
    sk = keys.update_sk("bank-1", "u1", 0)
    await records.put(item("digits", sk, num_examples=10, client_id="bank-1"))
    # WHEN a silo asks whether it (and another) exist THEN the answers are True and False
    assert await records.exists("digits", sk)
    assert not await records.exists("digits", keys.update_sk("bank-1", "u2", 1))


async def test_version_counter_advances_only_from_the_expected_version(
    records: Records,
) -> None:
    # GIVEN a TASK item at version 0
    await records.put(item("digits", keys.TASK_SK, version=0, status="RUNNING"))

    def advance(head: str) -> dict[str, object]:
        return records.update_op(
            "digits", keys.TASK_SK, {"version": 1, "head_key": head}, "#version = :seen",
            {":seen": 0},
        )  # fmt: skip

    # WHEN two writers both believe the version is 0
    winner = await records.update(advance("v1"))
    loser = await records.update(advance("v1-bis"))
    # THEN only the first applies
    assert (winner, loser) == (True, False)
    assert (await records.get("digits", keys.TASK_SK) or {})["head_key"] == "v1"


async def test_an_update_of_a_missing_item_is_refused_by_default(records: Records) -> None:
    refused = await records.update(records.update_op("digits", keys.round_sk(0), {"closed": True}))
    upserted = await records.update(
        records.update_op("digits", keys.round_sk(0), {"closed": True}, "attribute_not_exists(#sk)")
    )
    assert (refused, upserted) == (False, True)


async def test_string_sets_gain_and_lose_members(records: Records) -> None:
    # GIVEN a ROUND item
    await records.put(item("digits", keys.round_sk(1), status="OPEN"))
    # WHEN members are added, then one removed and an empty set left out
    await records.update(records.update_op("digits", keys.round_sk(1), {},
                                           add_to_sets={"members": ["a", "b", "c"]}))  # fmt: skip
    await records.update(
        records.update_op(
            "digits", keys.round_sk(1), {"status": "CLOSING"},
            delete_from_sets={"members": ["b"], "other": []},
        )
    )  # fmt: skip
    # THEN the set holds a and c
    got = await records.get("digits", keys.round_sk(1)) or {}
    assert (got["members"], got["status"]) == ({"a", "c"}, "CLOSING")
    # AND an update that changes nothing is a bug, said at once
    with pytest.raises(ValueError, match="changes nothing"):
        records.update_op("digits", keys.round_sk(1), {}, add_to_sets={"members": []})


async def test_an_update_removes_the_attributes_it_names(records: Records) -> None:
    # GIVEN a rejected verdict
    sk = "VERDICT#UPDATE#00000001#a"
    await records.put(item("digits", sk, verdict="rejected", reason="nan", seq=3))
    # WHEN it is superseded: its verdict and reason removed, a history set, in one update
    op = records.update_op("digits", sk, {"superseded": ["nan"]}, "#verdict = :r",
                           {":r": "rejected"}, remove=("verdict", "reason"))  # fmt: skip
    assert await records.update(op)
    # THEN only the named attributes are gone; the same update again fails its condition
    got = await records.get("digits", sk) or {}
    assert {k: v for k, v in got.items() if k not in ("task_name", "sk")} == {
        "superseded": ["nan"], "seq": 3
    }
    assert not await records.update(op)


async def test_query_returns_a_kind_of_item_in_key_order(records: Records) -> None:
    for client in ("c", "a", "b"):
        await records.put(item("digits", keys.update_sk(client, "x", 1), client_id=client))
    await records.put(item("digits", keys.update_sk("a", "x", 0), client_id="a"))
    await records.put(item("digits", keys.TASK_SK))
    await records.put(item("other", keys.update_sk("z", "x", 1)))
    round_1 = await records.query_prefix("digits", f"{keys.UPDATE_PREFIX}{1:08d}#")
    updates = await records.query_prefix("digits", keys.UPDATE_PREFIX)
    assert [i["client_id"] for i in round_1] == ["a", "b", "c"]
    assert len(updates) == 4


async def test_a_transaction_is_all_or_nothing(records: Records) -> None:
    # GIVEN a TASK item at version 3 and a ROUND item
    await records.put(item("digits", keys.TASK_SK, version=3))
    await records.put(item("digits", keys.round_sk(7), status="OPEN"))

    def ops(seen: int) -> list[dict[str, object]]:
        return [
            records.update_op("digits", keys.round_sk(7), {"status": "CLOSED"}),
            records.update_op("digits", keys.TASK_SK, {"version": seen + 1}, "#version = :v",
                              {":v": seen}),
        ]  # fmt: skip

    # WHEN a transaction closes the round and advances the version from a stale 2
    # THEN it answers False and writes nothing
    assert not await records.transact(ops(2))
    assert (await records.get("digits", keys.round_sk(7)) or {})["status"] == "OPEN"
    # AND from the right version it applies in full
    assert await records.transact(ops(3))
    assert (await records.get("digits", keys.TASK_SK) or {})["version"] == 4
    assert (await records.get("digits", keys.round_sk(7)) or {})["status"] == "CLOSED"


async def test_reads_more_items_than_one_batch_takes_in_order(records: Records) -> None:
    # GIVEN 230 update items (BatchGetItem takes 100 keys a call; moto enforces it)
    present = [keys.update_sk(f"c{i:03d}", "", 0) for i in range(230)]
    for i, sk in enumerate(present):
        await records.put(item("digits", sk, client_id=f"c{i:03d}", num_examples=i))
    # WHEN they are read in reverse, with 20 absent keys and a repeat mixed in
    absent = [keys.update_sk(f"x{i:03d}", "", 0) for i in range(20)]
    wanted = [*reversed(present), *absent, present[5]]
    got = await records.get_many("digits", wanted)
    # THEN every answer is at its key's position: item i holds num_examples i, absent is None
    assert [g["num_examples"] if g else None for g in got] == [
        *range(229, -1, -1),
        *([None] * 20),
        5,
    ]


def test_the_in_memory_conditions_read_as_dynamodb_reads_them() -> None:
    # GIVEN an item with a verdict and a head version (hand-evaluated cases)
    item = {"task_name": "t", "sk": "TASK", "verdict": "rejected", "head_version": 3}
    values = {":v": 3, ":w": 4, ":r": "rejected", ":a": "accepted"}
    cases = {
        "attribute_exists(#verdict)": True,
        "attribute_not_exists(#verdict)": False,
        "attribute_not_exists(sk)": False,
        "#head_version = :v": True,
        "#head_version <> :v": False,
        "#verdict IN (:a, :r)": True,
        "#verdict IN (:a)": False,
        "#missing <> :v": False,  # a comparison with a missing attribute is false
        "#missing = :v OR #head_version = :v": True,
        "#head_version = :w OR #verdict = :r AND attribute_exists(#pk)": True,
        "#head_version = :w OR #verdict = :a AND attribute_exists(#pk)": False,
    }
    assert {c: evaluate(c, item, {}, values) for c in cases} == cases
    # AND an absent item fails every comparison but attribute_not_exists
    assert evaluate("attribute_not_exists(#sk)", None, {}, values)
    assert not evaluate("#head_version = :v", None, {}, values)
    # AND a condition outside the subset is refused, not guessed
    with pytest.raises(ValueError, match="outside the supported subset"):
        evaluate("size(#verdict) > :v", item, {}, values)
