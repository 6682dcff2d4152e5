"""The call audit's names: whose a recorded call is, and each resource renamed to the
template's (stack prefix, stand-in clients), so that the template's statements judge it.

Resource names are `{prefix}-...` on both sides: a call of a stack with another prefix is
rewritten to the template's prefix, and each client id to one of the template's two
stand-in clients (`TemplateClients`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedasync.policy.evaluate import Statement
from fedasync.policy.template import ACCOUNT

CLIENT_PREFIX = "client:"


@dataclass(frozen=True)
class Owner:
    """Whose an access key is: a principal of the stack with this prefix, in a region."""

    principal: str
    prefix: str
    region: str


# moto's Step Functions engine signs its states' service calls with a key of its own
# (announced in an `engine` line; moto's default is the fixed "ak"): the stack whose
# state machine made the call is the one the resource belongs to.
ENGINE_KEY = "ak"
_STACK_RESOURCE = re.compile(r"[:/]([a-z][a-z0-9-]*?)-(?:table|control)$")


def engine_owner(call: Mapping[str, Any], engine_keys: set[str]) -> Owner | None:
    """The state machine of the stack a call of the Step Functions engine acts on."""
    if call.get("access_key") not in engine_keys:
        return None
    match = _STACK_RESOURCE.search(str(call["resource"]))
    region = str(call["resource"]).split(":")[3] if str(call["resource"]).count(":") > 3 else ""
    return Owner("state-machine", match.group(1), region or "us-east-1") if match else None


def kind(principal: str) -> str:
    """`client:silo-0` -> `client`; the server principals are their own kind."""
    return "client" if principal.startswith(CLIENT_PREFIX) else principal


def to_template(resource: str, owner: Owner, template_prefix: str) -> str:
    """Rename the owner's stack resources to the template's (`{prefix}-` after : or /)."""
    if owner.prefix == template_prefix:
        return resource
    return re.sub(rf"(?<=[:/]){re.escape(owner.prefix)}-", f"{template_prefix}-", resource)


def template_resource(call: Mapping[str, Any], owner: Owner, template_prefix: str) -> str:
    """The call's resource as the template names it."""
    resource = str(call["resource"])
    if resource == "*" and str(call["action"]).startswith("states:SendTask"):
        # A task token names no resource in the request; the token is the stack's own.
        return f"arn:aws:states:{owner.region}:{ACCOUNT}:stateMachine:{template_prefix}-fl-task"
    return to_template(resource, owner, template_prefix)


@dataclass(frozen=True)
class TemplateClients:
    """The template's two stand-in clients: every client is judged as `me` (its own id
    renamed so in the resources it names), any other client of its stack as `other`.
    Client roles differ only by the id, and one template per run with every client id
    a run uses would pass CloudFormation's 500-resource limit."""

    me: str = "audit-self"
    other: str = "audit-other"


def rename_clients(
    resource: str, me: str | None, clients: Iterable[str], to: TemplateClients
) -> str:
    for client in sorted(clients, key=len, reverse=True):
        stand_in = to.me if client == me else to.other
        c = re.escape(client)
        resource = re.sub(f"/local/{c}/", f"/local/{stand_in}/", resource)
        resource = re.sub(f"-client-{c}(?=$|-dlq$)", f"-client-{stand_in}", resource)
    return resource


def statement_key(statement: Statement) -> str:
    """One name for a statement of any client (or of a server principal): kind, sid or
    actions, and its resources with the client's own id generic."""
    return f"{kind(statement.origin)}:{statement.sid or '/'.join(sorted(statement.actions))}" + (
        f"@{','.join(sorted(generic(r, statement.origin) for r in statement.resources))}"
    )


def generic(resource: str, origin: str) -> str:
    """A client's own id in a resource (of its statement or call) as `<self>`."""
    if not origin.startswith(CLIENT_PREFIX):
        return resource
    client = re.escape(origin.removeprefix(CLIENT_PREFIX))
    out = re.sub(f"/{client}/", "/<self>/", resource)
    return re.sub(f"-client-{client}(?=$|-dlq$)", "-client-<self>", out)
