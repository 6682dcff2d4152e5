"""What one deployment serves: the clients and a few settings, from a file or CDK context.

Client ids and the shared names come from `fedasync.deployment` (`Deployment`) and `fedasync.resources`
(`ClientSpec`), so the CDK app and the embedded stack agree on every name.

Precedence: `-c clients=a,b,c` (ids only, principals default to the deploying
account) > `-c clients_file=path` > `infra/clients.yaml`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedasync.deployment import Deployment

# The local-update tag is defined beside the other shared names: the client sets it, the
# lifecycle rule (infra/storage.py) and the client policy match it.
from fedasync.resources import (  # noqa: F401 - re-exported for infra/
    LOCAL_UPDATE_TAG_KEY,
    LOCAL_UPDATE_TAG_VALUE,
    ClientSpec,
)

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent
DEFAULT_CLIENTS_FILE = INFRA_DIR / "clients.yaml"


# An IAM principal a client role may trust: an account id, an account root, or an IAM
# role/user ARN. Wildcards and service principals are refused on purpose.
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_PRINCIPAL_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:iam::\d{12}:(root|role/[\w+=,.@/-]+|user/[\w+=,.@/-]+)$"
)


class ConfigError(ValueError):
    """The clients file or context is unusable; the message says where and why."""


@dataclass(frozen=True)
class DeploymentConfig:
    """The shared stack description plus the settings only AWS has (lifecycle)."""

    spec: Deployment
    local_update_expiry_days: int = 30


def check_principal(client: ClientSpec) -> None:
    """Refuse a principal IAM would read as 'anyone' or as a service."""
    principal = client.principal
    if principal is None or _ACCOUNT_RE.match(principal) or _PRINCIPAL_ARN_RE.match(principal):
        return
    raise ConfigError(
        f"client {client.client_id!r}: principal {principal!r} is not an account id or an "
        "IAM root/role/user ARN; wildcards and service principals are not allowed"
    )


def _from_mapping(data: dict[str, Any], source: str) -> DeploymentConfig:
    unknown = set(data) - {"prefix", "clients", "local_update_expiry_days"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}")
    raw_clients = data.get("clients") or []
    if not isinstance(raw_clients, list) or not raw_clients:
        raise ConfigError(f"{source}: 'clients' must be a non-empty list of {{client_id: ...}}")
    try:
        clients = tuple(ClientSpec.model_validate(c) for c in raw_clients)
        spec = Deployment(prefix=data.get("prefix", "fedasync"), clients=clients)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    ids = spec.client_ids
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise ConfigError(f"{source}: duplicate client ids {duplicates}")
    for client in spec.clients:
        check_principal(client)
    days = data.get("local_update_expiry_days", 30)
    if not isinstance(days, int) or days < 1:
        raise ConfigError(f"{source}: local_update_expiry_days must be a positive integer")
    return DeploymentConfig(spec=spec, local_update_expiry_days=days)


def load_file(path: Path) -> DeploymentConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read clients file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'clients' list")
    return _from_mapping(data, str(path))


def load_config(
    clients: str | None = None, clients_file: str | None = None, prefix: str | None = None
) -> DeploymentConfig:
    """Resolve the deployment from CDK context values (all optional)."""
    if clients_file:
        path = Path(clients_file)
        # A relative path is taken from infra/, where `cdk` runs, whatever the caller's cwd.
        base = load_file(path if path.is_absolute() else INFRA_DIR / path)
    else:
        base = load_file(DEFAULT_CLIENTS_FILE)
    data: dict[str, Any] = {
        "prefix": prefix or base.spec.prefix,
        "local_update_expiry_days": base.local_update_expiry_days,
        "clients": [c.model_dump(exclude_none=True) for c in base.spec.clients],
    }
    if clients:
        data["clients"] = [{"client_id": c.strip()} for c in clients.split(",") if c.strip()]
    return _from_mapping(data, "context 'clients'" if clients else "clients file")
