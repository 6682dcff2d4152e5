"""The records port's rules that need no table: what a failed transaction means, and how
a condition's `#names` map to attributes."""

from __future__ import annotations

import pytest

from fedasync.aws.records import condition_names, transaction_failure


@pytest.mark.parametrize(
    ("code", "reasons", "meaning"),
    [
        # a condition failed: another try did the work
        ("ConditionalCheckFailedException", [], "done"),
        ("TransactionCanceledException", ["None", "ConditionalCheckFailed"], "done"),
        # cancelled by contention or throttling alone: nothing written, try again
        ("TransactionCanceledException", ["None", "TransactionConflict"], "retry"),
        ("TransactionCanceledException", ["ThrottlingError", "None"], "retry"),
        ("ThrottlingException", [], "retry"),
        # a validation error among the reasons, or no reason at all: a bug, raise it
        ("TransactionCanceledException", ["ValidationError", "TransactionConflict"], "raise"),
        ("TransactionCanceledException", ["None", "None"], "raise"),
        ("ValidationException", [], "raise"),
    ],
)
def test_a_failed_transaction_is_done_retried_or_raised(
    code: str, reasons: list[str], meaning: str
) -> None:
    assert transaction_failure(code, reasons) == meaning


def test_condition_names_map_placeholders_to_attributes() -> None:
    # GIVEN a condition on the sort key, a reserved word and a plain attribute
    condition = "attribute_not_exists(#sk) AND #status = :s AND #head_version < :v"
    # THEN #pk/#sk are the table's keys and every other #name is the attribute itself
    assert condition_names(condition) == {
        "#sk": "sk",
        "#status": "status",
        "#head_version": "head_version",
    }
    # AND a condition without placeholders names nothing (the silo's put sends no names)
    assert condition_names("attribute_not_exists(sk)") == {}
