"""docs/protocol.md says what the code does: its keys, ids, attribute list and examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

from client.worker import update_id_for
from fedasync.core import keys
from fedasync.core.messages import SCHEMA_VERSION, GlobalModelNotice
from fedasync.policy.definitions import CLIENT_ITEM_ATTRIBUTES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def section(number: int) -> str:
    start = DOC.index(f"\n## {number}. ")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def test_the_documented_version_is_the_code_s():
    assert f"**Protocol version {SCHEMA_VERSION}**" in DOC


def test_every_attribute_a_silo_may_write_is_listed_in_its_iam_section():
    # GIVEN the attribute names the silo role's PutItem condition allows
    # WHEN §8 is read THEN it names each of them, and no other
    listed = re.search(r"attribute names are among\s+`([^`]+)`", section(8), re.S)
    assert listed is not None
    names = {n.strip() for n in listed.group(1).replace("\n", " ").split(",")}
    assert names == set(CLIENT_ITEM_ATTRIBUTES)


def test_the_keys_and_ids_in_the_examples_are_the_code_s():
    # GIVEN an async notice on version 7 with seq 12 for silo-0, and sync round 3
    notice = GlobalModelNotice(
        task_name="digits", mode="async", version=7, seq=12, sha256="0" * 64, size_bytes=1,
        s3_key=keys.global_key("digits", 7),
    )  # fmt: skip
    update_id = update_id_for("silo-0", notice)
    # THEN the document's examples are what the reference client and the server compute
    assert update_id == "silo-0-b00000007-s00000012"
    for text in (
        keys.update_sk("silo-0", update_id, None),
        keys.local_key("digits", "silo-0", 7, update_id),
        keys.update_sk("silo-0", "r00000003", 3),
        keys.global_key("digits", 3),
        keys.heartbeat_sk("{client_id}"),
    ):
        assert text in DOC, text


def test_the_example_notices_parse_as_notices():
    # GIVEN the two notice examples of §1.2, their SHA-256 elided as "9f…"
    examples = re.findall(r"```json\n(\{\"schema_version\".*?\})\n```", section(1))
    assert len(examples) == 2
    for text in examples:
        data = json.loads(text.replace('"9f…"', '"' + "9f" * 32 + '"'))
        # WHEN parsed by the code's model THEN valid, and it prints back the same fields
        assert json.loads(GlobalModelNotice.parse(data).to_json()) == data


def test_the_example_update_item_is_a_valid_record_under_its_own_key():
    # GIVEN the async PutItem Item of §2.2 (DynamoDB-typed), its SHA-256 elided as "5d…"
    from fedasync.aws.records import deserialize_item
    from fedasync.core.decisions import parse_update_item

    found = re.search(r"```json\n(\{\"task_name\": \{\"S\".*?\})\n```", section(2), re.S)
    assert found is not None
    item = deserialize_item(json.loads(found.group(1).replace('"5d…"', '"' + "5d" * 32 + '"')))
    # WHEN the server parses it as it parses a stream record's item
    record = parse_update_item(item)
    # THEN it is the record described: async (no round), stored under its own sort key
    assert (record.round_id, record.base_version, record.num_examples) == (None, 7, 120)
    assert record.sk == item["sk"] and record.metrics == {"eval_loss": 0.31, "eval_accuracy": 0.9}
    record.check_key()  # under the client's own prefix
