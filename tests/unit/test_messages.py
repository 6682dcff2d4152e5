"""Wire messages: strict schemas, versioned, with stable idempotency keys."""

import json

import pytest

from fedasync.core.errors import SchemaError, UnknownClientError
from fedasync.core.messages import GlobalModelNotice, Heartbeat, UpdateRecord

SHA = "ab" * 32


def _update(**over):
    data = {
        "task_name": "digits",
        "client_id": "bank-3",
        "update_id": "r00000002",
        "base_version": 2,
        "round_id": 2,
        "s3_key": "digits/local/bank-3/00000002-r00000002.safetensors",
        "sha256": SHA,
        "size_bytes": 100,
        "num_examples": 40,
        "metrics": {"loss": 0.5},
    }
    data.update(over)
    return data


def test_update_round_trips_through_json_and_has_a_stable_key():
    rec = UpdateRecord.parse(_update())
    again = UpdateRecord.parse(rec.to_json())
    assert again == rec
    assert rec.sk == "UPDATE#00000002#bank-3"
    assert rec.idempotency_key == "digits#UPDATE#00000002#bank-3"


def test_async_update_is_keyed_by_update_id():
    rec = UpdateRecord.parse(_update(round_id=None, update_id="u-7"))
    assert rec.sk == "UPDATE#u-7"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(_update(schema_version=2)), "schema_version 2 is not supported"),
        (
            json.dumps({k: v for k, v in _update().items() if k != "sha256"}),
            "sha256: Field required",
        ),
        (json.dumps(_update(num_examples=-1)), "num_examples"),
        (json.dumps(_update(metrics={"loss": float("nan")})), "not finite"),
        (json.dumps(_update(extra="x")), "extra"),
        (json.dumps(_update(sha256="zz")), "sha256"),
    ],
)
def test_malformed_updates_are_schema_errors_that_say_why(payload, fragment):
    with pytest.raises(SchemaError) as info:
        UpdateRecord.parse(payload)
    assert fragment in str(info.value)


def test_an_update_pointing_outside_its_own_prefix_is_refused():
    rec = UpdateRecord.parse(_update(s3_key="digits/local/hospital-a/00000002-x.safetensors"))
    with pytest.raises(UnknownClientError) as info:
        rec.check_key()
    assert info.value.reason == "spoofed_key"
    assert "digits/local/bank-3/" in str(info.value)
    UpdateRecord.parse(_update()).check_key()  # its own prefix is fine


def test_notice_and_heartbeat_keys():
    notice = GlobalModelNotice(
        task_name="digits",
        mode="async",
        version=7,
        s3_key="digits/global/00000007.safetensors",
        sha256=SHA,
        size_bytes=1,
    )
    assert notice.idempotency_key == "digits#v00000007"
    beat = Heartbeat(task_name="digits", client_id="a", sent_at=100.0, expires_at=160)
    assert beat.sk == "HEARTBEAT#a"
    assert beat.alive_at(159.0)
    assert not beat.alive_at(160.0)


def test_an_async_notice_key_names_its_go_ahead_and_a_sync_one_may_not_carry_one():
    base = {
        "task_name": "digits",
        "version": 7,
        "s3_key": "digits/global/00000007.safetensors",
        "sha256": "ab" * 32,
        "size_bytes": 1,
    }
    notice = GlobalModelNotice(mode="async", seq=12, **base)
    assert notice.idempotency_key == "digits#v00000007#s00000012"
    assert GlobalModelNotice.parse(notice.to_json()) == notice
    with pytest.raises(SchemaError, match="seq is for async notices"):
        GlobalModelNotice.parse(
            json.dumps(
                {
                    **base,
                    "mode": "sync",
                    "round_id": 7,
                    "seq": 1,
                    "kind": "global_model",
                    "schema_version": 1,
                }
            )
        )


def test_an_update_item_carries_its_key_and_parses_back_to_the_record():
    from fedasync.core.decisions import parse_update_item

    record = UpdateRecord(
        task_name="digits",
        client_id="bank-3",
        update_id="bank-3-b00000002",
        base_version=2,
        s3_key="digits/local/bank-3/00000002-bank-3-b00000002.safetensors",
        sha256="ab" * 32,
        size_bytes=10,
        num_examples=5,
    )
    item = record.item()
    assert item["sk"] == "UPDATE#bank-3-b00000002"
    assert "round_id" not in item  # absent, not null, as a client writes it
    assert parse_update_item(item) == record
