"""Which clients a deployment serves: clients.yaml by default, or CDK context."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedasync.resources import ClientSpec
from infra.config import ConfigError, check_principal, load_config

pytestmark = pytest.mark.cdk


def test_the_default_is_three_clients_trusting_the_deploying_account() -> None:
    config = load_config()
    assert config.spec.client_ids == ("hospital-a", "bank-b", "datacentre-c")
    assert all(c.principal is None for c in config.spec.clients)
    assert config.spec.prefix == "fedasync"


def test_context_clients_override_the_file() -> None:
    config = load_config(clients="a, b,c")
    assert config.spec.client_ids == ("a", "b", "c")


def test_a_clients_file_names_principals(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(
        "prefix: lab\nlocal_update_expiry_days: 7\nclients:\n"
        "  - client_id: x\n    principal: '111122223333'\n",
        encoding="utf-8",
    )
    config = load_config(clients_file=str(path))
    assert config.spec.prefix == "lab"
    assert config.local_update_expiry_days == 7
    assert config.spec.clients == (ClientSpec(client_id="x", principal="111122223333"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients:\n  - client_id: x\n    principal: '*'\n", "wildcards"),
        ("clients:\n  - client_id: x\n    principal: sqs.amazonaws.com\n", "service principals"),
        ("clients:\n  - client_id: x\n  - client_id: x\n", "duplicate client ids"),
        ("clients: []\n", "non-empty list"),
        ("clients:\n  - client_id: 'no/slash'\n", "client_id"),
        ("clients:\n  - client_id: x\nregion: eu-west-1\n", "unknown keys"),
    ],
)
def test_a_bad_clients_file_is_refused_with_a_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(clients_file=str(path))


def test_role_and_root_arns_are_accepted_as_principals() -> None:
    for principal in (
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::111122223333:role/team/fl-trainer",
        "arn:aws-cn:iam::111122223333:user/silo",
    ):
        check_principal(ClientSpec(client_id="x", principal=principal))
