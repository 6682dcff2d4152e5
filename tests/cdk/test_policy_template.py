"""The synthesized template's policies, per principal, as the call audit reads them."""

from __future__ import annotations

import pytest

from tests.cdk.support import Synth, require_cdk

require_cdk()

from fedasync.deployment import Deployment  # noqa: E402
from fedasync.policy.evaluate import Request, evaluate  # noqa: E402
from fedasync.policy.template import principal_statements  # noqa: E402
from fedasync.resources import ClientSpec  # noqa: E402

pytestmark = pytest.mark.cdk

SPEC = Deployment(
    prefix="fedasync",
    clients=tuple(ClientSpec(client_id=c) for c in ("hospital-a", "bank-b", "datacentre-c")),
)
ARN = "arn:aws:{}:us-east-1:123456789012:{}"
TABLE = ARN.format("dynamodb", "table/fedasync-table")
SERVER_TABLE = ARN.format("dynamodb", "table/fedasync-table-server")
BUCKET = "arn:aws:s3:::fedasync-models"  # the embedded stack's name for the models bucket
MACHINE = ARN.format("states", "stateMachine:fedasync-fl-task")


@pytest.fixture(scope="module")
def statements(default_synth: Synth) -> dict:
    return principal_statements(default_synth.template, SPEC, nested=default_synth.nested)


def allowed(statements: dict, principal: str, action: str, resource: str, **context) -> bool:
    return evaluate(statements[principal], Request(principal, action, resource, context)).allowed


def test_every_principal_of_the_stack_has_its_statements(statements: dict) -> None:
    # GIVEN the default template WHEN read per principal THEN each principal is there
    assert set(statements) == {
        "aggregate",
        "control",
        "state-machine",
        "operator",
        "client:hospital-a",
        "client:bank-b",
        "client:datacentre-c",
    }


def test_server_roles_read_a_round_in_one_batch_and_list_the_bucket(statements: dict) -> None:
    for role in ("aggregate", "control"):
        assert allowed(statements, role, "dynamodb:BatchGetItem", TABLE)
        assert allowed(statements, role, "s3:ListBucket", BUCKET)
        assert allowed(statements, role, "s3:GetObject", f"{BUCKET}/digits/local/bank-b/x")
        assert not allowed(statements, role, "dynamodb:DeleteItem", TABLE)
    # the stream read is the aggregate's (its event source), the control queue the control's
    stream = f"{TABLE}/stream/2026-01-01T00:00:00.000"
    assert allowed(statements, "aggregate", "dynamodb:GetRecords", stream)
    assert not allowed(statements, "control", "dynamodb:GetRecords", stream)
    control_queue = ARN.format("sqs", "fedasync-control")
    assert allowed(statements, "control", "sqs:ReceiveMessage", control_queue)
    assert not allowed(statements, "aggregate", "sqs:ReceiveMessage", control_queue)


def test_the_state_machine_updates_the_table_and_sends_to_the_control_queue(
    statements: dict,
) -> None:
    # the TASK status it writes lives in the server table; the silos' inbox it never touches
    assert allowed(statements, "state-machine", "dynamodb:UpdateItem", SERVER_TABLE)
    assert allowed(
        statements, "state-machine", "sqs:SendMessage", ARN.format("sqs", "fedasync-control")
    )
    assert not allowed(statements, "state-machine", "dynamodb:GetItem", SERVER_TABLE)
    assert not allowed(statements, "state-machine", "dynamodb:UpdateItem", TABLE)


def test_the_operator_runs_tasks_of_this_state_machine_only(statements: dict) -> None:
    execution = ARN.format("states", "execution:fedasync-fl-task:digits")
    assert allowed(statements, "operator", "states:StartExecution", MACHINE)
    assert allowed(statements, "operator", "states:DescribeExecution", execution)
    assert allowed(statements, "operator", "states:StopExecution", execution)
    assert allowed(
        statements, "operator", "s3:PutObject", f"{BUCKET}/digits/global/00000000.safetensors"
    )
    # the TASK item, in the server table; the inbox it may only read
    assert allowed(statements, "operator", "dynamodb:PutItem", SERVER_TABLE)
    assert allowed(statements, "operator", "dynamodb:Query", TABLE)
    assert not allowed(statements, "operator", "dynamodb:PutItem", TABLE)
    other = ARN.format("states", "execution:other-fl-task:digits")
    assert not allowed(statements, "operator", "states:DescribeExecution", other)
    assert not allowed(
        statements, "operator", "sqs:SendMessage", ARN.format("sqs", "fedasync-control")
    )


def test_a_client_writes_its_own_prefix_and_nothing_of_another(statements: dict) -> None:
    own = f"{BUCKET}/digits/local/bank-b/00000001-u.safetensors"
    other = f"{BUCKET}/digits/local/hospital-a/00000001-u.safetensors"
    assert allowed(statements, "client:bank-b", "s3:PutObject", own)
    assert not allowed(statements, "client:bank-b", "s3:PutObject", other)
    queue = ARN.format("sqs", "fedasync-client-hospital-a")
    assert not allowed(statements, "client:bank-b", "sqs:ReceiveMessage", queue)
