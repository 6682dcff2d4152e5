"""The condition builders of `fedasync/core/items/expressions.py`: each gives the string the
server's writes spelled by hand before (issue 20, item 3), so the requests stay the same."""

from __future__ import annotations

import pytest

from fedasync.aws.records import condition_names
from fedasync.core.items import expressions as x
from fedasync.core.items import round as r
from fedasync.core.items import task as t
from fedasync.core.items import verdict as v


@pytest.mark.parametrize(
    ("built", "written"),
    [
        (x.absent(v.VERDICT), "attribute_not_exists(#verdict)"),
        (x.absent(r.MEMBERS), "attribute_not_exists(#members)"),
        (x.all_of(x.ITEM_EXISTS, x.absent(r.CLOSED)),
         "attribute_exists(#pk) AND attribute_not_exists(#closed)"),
        (x.all_of(x.equals(t.HEAD_VERSION, ":expected"), x.absent(t.FINISHED)),
         "#head_version = :expected AND attribute_not_exists(#finished)"),
        (x.all_of(x.equals(v.ITEM_DIGEST, ":digest"), x.equals(v.VERDICT, ":rejected")),
         "#item_digest = :digest AND #verdict = :rejected"),
        (x.all_of(x.equals(t.ABSORBED, ":expected"), x.absent(t.FINISHED),
                  x.equals(t.BUFFERED, ":buffered")),
         "#absorbed = :expected AND attribute_not_exists(#finished) AND #buffered = :buffered"),
        (x.all_of(x.equals(t.ATTEMPT, ":attempt"), x.absent(t.FINISHED)),
         "#attempt = :attempt AND attribute_not_exists(#finished)"),
        (x.one_of(t.STATUS, ":starting", ":running"), "#status IN (:starting, :running)"),
        (x.present(r.CLOSED), "attribute_exists(#closed)"),
        (x.ITEM_ABSENT, "attribute_not_exists(#sk)"),
    ],
)  # fmt: skip
def test_a_built_condition_is_the_hand_written_one(built: str, written: str) -> None:
    # GIVEN a condition the server wrote by hand before  WHEN it is built from the codec's names
    # THEN it is the same string, character for character
    assert built == written


def test_the_port_names_each_attribute_of_a_built_condition() -> None:
    # GIVEN a condition built from the codec's names
    built = x.all_of(x.equals(t.HEAD_VERSION, ":expected"), x.absent(t.FINISHED), x.ITEM_EXISTS)
    # WHEN the Records port derives its ExpressionAttributeNames
    # THEN each placeholder stands for the attribute itself (the table's key for #pk)
    assert condition_names(built) == {
        "#head_version": "head_version", "#finished": "finished", "#pk": "task_name"
    }  # fmt: skip


@pytest.mark.parametrize(
    "call",
    [
        lambda: x.equals(t.ATTEMPT, "attempt"),
        lambda: x.one_of(t.STATUS),
        lambda: x.one_of(t.STATUS, "starting"),
        x.all_of,
    ],
)
def test_a_malformed_condition_is_refused_with_its_reason(call: object) -> None:
    # GIVEN a value without its ':' placeholder, or nothing to join
    # WHEN the condition is built  THEN a ValueError says why (never a request DynamoDB refuses)
    with pytest.raises(ValueError, match=r"placeholder|names no value|no condition"):
        call()  # type: ignore[operator]
