"""The IAM evaluator against the policy evaluation rules of the IAM User Guide.

Expected outcomes come from the IAM documentation ("Policy evaluation logic", "IAM JSON
policy elements: Condition operators", "Single-valued vs. multivalued context keys"),
not from the evaluator's code.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedasync.policy.evaluate import (
    Request,
    Statement,
    UnsupportedConditionError,
    condition_holds,
    could_allow,
    evaluate,
    glob,
)

BUCKET = "arn:aws:s3:::models"


def st(**doc: Any) -> Statement:
    return Statement.from_json({"Effect": "Allow", **doc})


def req(action: str, resource: str, **context: Any) -> Request:
    return Request("p", action, resource, context)


def test_no_statement_is_an_implicit_deny() -> None:
    # GIVEN no statement WHEN anything is asked THEN it is denied, and nothing denied it
    decision = evaluate([], req("s3:GetObject", f"{BUCKET}/a"))
    assert not decision.allowed and decision.denied_by is None


def test_an_explicit_deny_beats_any_allow() -> None:
    # GIVEN an Allow on every object and a Deny on one prefix
    allow = st(Action="s3:*", Resource=f"{BUCKET}/*")
    deny = Statement.from_json(
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"{BUCKET}/secret/*"}
    )
    # WHEN reading under the denied prefix THEN denied, by the Deny, in either order
    for statements in ([allow, deny], [deny, allow]):
        decision = evaluate(statements, req("s3:GetObject", f"{BUCKET}/secret/x"))
        assert not decision.allowed and decision.denied_by is deny
    # AND elsewhere the Allow holds
    assert evaluate([allow, deny], req("s3:GetObject", f"{BUCKET}/public/x")).allowed


def test_wildcards_cross_slashes_and_actions_ignore_case() -> None:
    # The docs: "*" matches any combination of characters, including "/"; "?" one.
    assert glob(f"{BUCKET}/*/local/a/*", f"{BUCKET}/t/local/a/x/y")
    assert glob("arn:aws:sqs:*:*:q?", "arn:aws:sqs:us-east-1:1:q1")
    assert not glob("arn:aws:sqs:*:*:q?", "arn:aws:sqs:us-east-1:1:q12")
    # Action names are case-insensitive, resource ARNs are case-sensitive
    s = st(Action="S3:getobject", Resource=f"{BUCKET}/A")
    assert evaluate([s], req("s3:GetObject", f"{BUCKET}/A")).allowed
    assert not evaluate([s], req("s3:GetObject", f"{BUCKET}/a")).allowed


def test_not_action_and_not_resource_match_everything_else() -> None:
    s = st(NotAction="s3:DeleteObject", NotResource=f"{BUCKET}/keep/*")
    assert evaluate([s], req("s3:GetObject", f"{BUCKET}/x")).allowed
    assert not evaluate([s], req("s3:DeleteObject", f"{BUCKET}/x")).allowed
    assert not evaluate([s], req("s3:GetObject", f"{BUCKET}/keep/x")).allowed


@pytest.mark.parametrize(
    ("operator", "expected", "context", "holds"),
    [
        # a missing key fails a positive operator ...
        ("StringEquals", ["a"], {}, False),
        ("StringLike", ["a*"], {}, False),
        # ... passes a negated one, and any ...IfExists
        ("StringNotEquals", ["a"], {}, True),
        ("StringNotLike", ["a*"], {}, True),
        ("StringEqualsIfExists", ["a"], {}, True),
        ("StringEqualsIfExists", ["a"], {"k": "b"}, False),
        # several condition values OR together
        ("StringEquals", ["a", "b"], {"k": "b"}, True),
        ("StringNotEquals", ["a", "b"], {"k": "b"}, False),
        ("StringNotEquals", ["a", "b"], {"k": "c"}, True),
        ("StringEqualsIgnoreCase", ["ABC"], {"k": "abc"}, True),
        ("StringEquals", ["ABC"], {"k": "abc"}, False),
        ("StringLike", ["home/*"], {"k": "home/x/y"}, True),
        # ForAllValues: every request value in the set; vacuously true when absent/empty
        ("ForAllValues:StringEquals", ["a", "b"], {"k": ["a", "b"]}, True),
        ("ForAllValues:StringEquals", ["a", "b"], {"k": ["a", "c"]}, False),
        ("ForAllValues:StringEquals", ["a", "b"], {}, True),
        ("ForAllValues:StringEquals", ["a", "b"], {"k": []}, True),
        # ForAnyValue: at least one; false when absent
        ("ForAnyValue:StringEquals", ["a"], {"k": ["c", "a"]}, True),
        ("ForAnyValue:StringEquals", ["a"], {"k": ["c"]}, False),
        ("ForAnyValue:StringEquals", ["a"], {}, False),
        # Null: "true" means the key is absent
        ("Null", ["true"], {}, True),
        ("Null", ["true"], {"k": "x"}, False),
        ("Null", ["false"], {"k": "x"}, True),
        ("Null", ["false"], {}, False),
        ("Bool", ["true"], {"k": "true"}, True),
        ("Bool", ["true"], {"k": "false"}, False),
        ("Bool", ["true"], {}, False),
        ("ArnLike", ["arn:aws:sqs:*:1:q-*"], {"k": "arn:aws:sqs:eu-west-1:1:q-7"}, True),
        ("ArnNotLike", ["arn:aws:sqs:*:1:q-*"], {"k": "arn:aws:sqs:eu-west-1:1:q-7"}, False),
        ("NumericLessThanEquals", ["10"], {"k": "10"}, True),
        ("NumericLessThan", ["10"], {"k": "10"}, False),
        ("NumericGreaterThan", ["10"], {"k": "x"}, False),
    ],
)
def test_condition_operators(
    operator: str, expected: list[str], context: dict[str, Any], holds: bool
) -> None:
    assert condition_holds(operator, "k", expected, context) is holds


def test_condition_key_names_are_case_insensitive() -> None:
    assert condition_holds("StringEquals", "s3:Prefix", ["a/"], {"s3:prefix": "a/"})


def test_operators_and_keys_and_together() -> None:
    # GIVEN a statement with two operators, one with two keys
    s = st(
        Action="dynamodb:GetItem",
        Resource="*",
        Condition={
            "StringEquals": {"a": "1", "b": "2"},
            "Null": {"c": "false"},
        },
    )
    ok = req("dynamodb:GetItem", "t", a="1", b="2", c="x")
    assert evaluate([s], ok).allowed
    # WHEN any one of them fails THEN the statement does not apply, and says which failed
    decision = evaluate([s], req("dynamodb:GetItem", "t", a="1", b="3", c="x"))
    assert not decision.allowed
    ((miss, failed),) = decision.near_misses
    assert miss is s and failed == ("StringEquals b ['2']",)


def test_a_conditional_deny_applies_only_when_its_condition_holds() -> None:
    allow = st(Action="s3:PutObject", Resource="*")
    deny = Statement.from_json(
        {
            "Effect": "Deny",
            "Action": "s3:PutObject",
            "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    )
    assert not evaluate(
        [allow, deny], req("s3:PutObject", "x", **{"aws:SecureTransport": "false"})
    ).allowed
    assert evaluate(
        [allow, deny], req("s3:PutObject", "x", **{"aws:SecureTransport": "true"})
    ).allowed
    # Bool on a missing key does not hold, so the Deny does not apply
    assert evaluate([allow, deny], req("s3:PutObject", "x")).allowed


def test_an_unmodelled_operator_is_refused_not_ignored() -> None:
    with pytest.raises(UnsupportedConditionError):
        condition_holds("DateLessThan", "aws:CurrentTime", ["2020-01-01"], {})
    with pytest.raises(UnsupportedConditionError):
        condition_holds("ForSomeValues:StringEquals", "k", ["a"], {"k": "a"})


def test_a_statement_needs_effect_allow_or_deny() -> None:
    with pytest.raises(ValueError, match="neither Allow nor Deny"):
        Statement.from_json({"Effect": "allow", "Action": "*", "Resource": "*"})


def test_could_allow_over_approximates_conditions() -> None:
    # GIVEN an Allow under a condition, a conditional Deny and an unconditional Deny
    bucket = "arn:aws:s3:::b"
    statements = [
        Statement.from_json(
            {
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"{bucket}/*",
                "Condition": {"StringEquals": {"s3:x-amz-acl": "private"}},
            }
        ),
        Statement.from_json(
            {
                "Effect": "Deny",
                "Action": "s3:PutObject",
                "Resource": f"{bucket}/tmp/*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ),
        Statement.from_json({"Effect": "Deny", "Action": "s3:*", "Resource": f"{bucket}/locked/*"}),
    ]
    # THEN some context gets a put through under the conditional Allow, even where a
    # conditional Deny may apply; none under the unconditional Deny, nor where no Allow is
    assert could_allow(statements, "s3:PutObject", f"{bucket}/a")
    assert could_allow(statements, "s3:PutObject", f"{bucket}/tmp/a")
    assert not could_allow(statements, "s3:PutObject", f"{bucket}/locked/a")
    assert not could_allow(statements, "s3:GetObject", f"{bucket}/a")
