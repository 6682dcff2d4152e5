"""The call audit over hand-written audit lines and hand-written policies."""

from __future__ import annotations

from fedasync.policy.audit import audit
from fedasync.policy.audit_names import TemplateClients, rename_clients
from fedasync.policy.audit_render import render
from fedasync.policy.evaluate import Statement

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/{}-table"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:{}-client-{}"


def statements() -> dict[str, tuple[Statement, ...]]:
    silo = (
        Statement.from_json(
            {
                "Sid": "Receive",
                "Effect": "Allow",
                "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
                "Resource": QUEUE.format("fedasync", "silo-0"),
            }
        ),
        Statement.from_json(
            {
                "Sid": "Check",
                "Effect": "Allow",
                "Action": "dynamodb:GetItem",
                "Resource": TABLE.format("fedasync"),
                "Condition": {"Null": {"dynamodb:Attributes": "false"}},
            }
        ),
    )
    return {"client:silo-0": silo}


def lines(*calls: dict) -> list[dict]:
    principal = {
        "type": "principal",
        "access_key": "K0",
        "principal": "client:silo-0",
        "prefix": "t123",
        "region": "us-east-1",
    }
    return [principal, {"type": "test", "nodeid": "t.py::one"}, *calls]


def call(action: str, resource: str, key: str = "K0", **context) -> dict:
    return {
        "type": "call",
        "access_key": key,
        "action": action,
        "resource": resource,
        "context": context,
        "status": 200,
    }


def test_calls_are_judged_in_the_template_names_and_unused_grants_reported() -> None:
    # GIVEN silo-0 of stack t123 receiving from its own queue (named t123-client-silo-0)
    report = audit(
        lines(call("sqs:ReceiveMessage", QUEUE.format("t123", "silo-0"))), statements(), "fedasync"
    )
    # THEN it is allowed, counted, and DeleteMessage / the Check statement are unused
    assert report.ok
    assert report.used["client"] == {"sqs:ReceiveMessage": 1}
    assert any("sqs:DeleteMessage" in u for u in report.unused)
    assert any("(Check)" in u for u in report.unused)


def test_a_refusal_names_principal_action_resource_and_the_failed_condition() -> None:
    # WHEN silo-0 reads an item with no projection THEN the run fails, saying why
    report = audit(lines(call("dynamodb:GetItem", TABLE.format("t123"))), statements(), "fedasync")
    assert not report.ok
    (refusal,) = report.refusals.values()
    assert (refusal.principal, refusal.action) == ("client:silo-0", "dynamodb:GetItem")
    assert refusal.resource == TABLE.format("fedasync")
    assert (
        "Check matches but its condition fails: Null dynamodb:Attributes ['false']"
        in refusal.reason
    )
    assert refusal.tests == {"t.py::one"}
    assert any(line.startswith("REFUSED") for line in render(report))


def test_another_silos_queue_is_refused_unless_the_test_expects_it() -> None:
    other = QUEUE.format("t123", "silo-1")
    assert not audit(lines(call("sqs:ReceiveMessage", other)), statements(), "fedasync").ok
    expect = {
        "type": "expect",
        "principal": "client:silo-0",
        "action": "sqs:ReceiveMessage",
        "resource": other,
    }
    report = audit(lines(expect, call("sqs:ReceiveMessage", other)), statements(), "fedasync")
    assert report.ok and report.expected_refusals == 1
    # AND an expected refusal that IAM would allow fails the run too
    mine = QUEUE.format("t123", "silo-0")
    expect_mine = expect | {"resource": mine}
    assert not audit(
        lines(expect_mine, call("sqs:ReceiveMessage", mine)), statements(), "fedasync"
    ).ok


def test_calls_of_unknown_keys_are_the_harness_and_not_judged() -> None:
    report = audit(
        lines(call("dynamodb:DeleteTable", TABLE.format("t123"), key="testing")),
        statements(),
        "fedasync",
    )
    assert report.ok and report.harness_calls == 1


def test_a_principal_without_a_policy_in_the_template_is_refused_everything() -> None:
    line = {
        "type": "principal",
        "access_key": "K9",
        "principal": "operator",
        "prefix": "t123",
        "region": "us-east-1",
    }
    report = audit(
        [line, call("states:StartExecution", "arn:x", key="K9")], statements(), "fedasync"
    )
    (refusal,) = report.refusals.values()
    assert "no policy for principal 'operator'" in refusal.reason


def test_clients_are_judged_as_the_templates_stand_ins() -> None:
    # GIVEN a template with two stand-in clients, 'audit-self' and 'audit-other'
    stand_ins = TemplateClients()
    queue = QUEUE.format("fedasync", "audit-self")
    silo = (
        Statement.from_json({"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": queue}),
        Statement.from_json(
            {
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": "arn:aws:s3:::fedasync-models/*/local/audit-self/*",
            }
        ),
    )
    template = {"client:audit-self": silo}
    other = {
        "type": "principal",
        "access_key": "K1",
        "principal": "client:silo-1",
        "prefix": "t123",
        "region": "us-east-1",
    }
    # WHEN silo-0 uses its own queue and prefix THEN allowed; silo-1's THEN refused
    own = [
        call("sqs:ReceiveMessage", QUEUE.format("t123", "silo-0")),
        call("s3:PutObject", "arn:aws:s3:::t123-models/d/local/silo-0/1.safetensors"),
    ]
    assert audit([other, *lines(*own)], template, "fedasync", stand_ins).ok
    theirs = call("s3:PutObject", "arn:aws:s3:::t123-models/d/local/silo-1/1.safetensors")
    report = audit([other, *lines(theirs)], template, "fedasync", stand_ins)
    (refusal,) = report.refusals.values()
    assert refusal.principal == "client:silo-0"
    assert refusal.resource == "arn:aws:s3:::fedasync-models/d/local/audit-other/1.safetensors"


def test_renaming_touches_whole_client_ids_only() -> None:
    to = TemplateClients()
    renamed = rename_clients(QUEUE.format("p", "c"), "c", ["c", "cc"], to)
    assert renamed == QUEUE.format("p", "audit-self")
    assert rename_clients(QUEUE.format("p", "cc") + "-dlq", "c", ["c", "cc"], to) == (
        QUEUE.format("p", "audit-other") + "-dlq"
    )
    assert rename_clients("arn:aws:s3:::b/t/local/cc/x", "c", ["c", "cc"], to).endswith(
        "/local/audit-other/x"
    )
