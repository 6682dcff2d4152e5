"""The call audit: every recorded request, judged by the synthesized template's policies.

Input: the JSON lines the embedded stack writes while tests run (`FEDASYNC_AUDIT_LOG`):
- `principal` lines (provisioning): which access key belongs to which principal of which
  stack prefix;
- `call` lines (the moto server, `fedasync.local.calls`): key, action, resource,
  condition-key fields, response status;
- `test` lines (the pytest plugin): which test ran from there on;
- `expect` lines: a request a test makes on purpose to show it is refused.

Each call of a known principal is rewritten from its stack's prefix to the template's
(resource names are `{prefix}-...` on both sides) and evaluated against that principal's
statements. A request the deployed role would refuse is a finding (unless expected);
so is a statement, or an action of a statement, that no call used. Calls signed by
keys of no principal are the test harness's own (provisioning, oracles) and are counted,
not judged.

Whose a call is and how its resource is renamed: `fedasync.policy.audit_names`; the
report as lines for the terminal: `fedasync.policy.audit_render`.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedasync.policy.audit_names import (
    CLIENT_PREFIX,
    ENGINE_KEY,
    Owner,
    TemplateClients,
    engine_owner,
    generic,
    kind,
    rename_clients,
    statement_key,
    template_resource,
)
from fedasync.policy.evaluate import Request, Statement, evaluate, glob


@dataclass
class Refusal:
    principal: str
    action: str
    resource: str
    reason: str
    needed: dict[str, Any]
    tests: set[str] = field(default_factory=set)
    count: int = 0


@dataclass
class AuditReport:
    calls: int = 0
    harness_calls: int = 0
    used: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    refusals: dict[tuple[str, str, str, str], Refusal] = field(default_factory=dict)
    expected_refusals: int = 0
    unexpected_allows: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    unparsed: int = 0

    @property
    def ok(self) -> bool:
        return not self.refusals and not self.unexpected_allows


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def client_ids(lines: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(
        {
            str(line["principal"]).removeprefix(CLIENT_PREFIX)
            for line in lines
            if line.get("type") == "principal" and str(line["principal"]).startswith(CLIENT_PREFIX)
        }
    )


def audit(
    lines: Iterable[Mapping[str, Any]],
    statements: Mapping[str, tuple[Statement, ...]],
    template_prefix: str,
    stand_ins: TemplateClients | None = None,
) -> AuditReport:
    auditor = _Auditor(statements, template_prefix, stand_ins)
    for line in lines:
        auditor.read(line)
    auditor.report.unused = _unused(statements, auditor.used_statements)
    return auditor.report


_SHARD = re.compile(r"^(arn:aws:sns:[^:]*:[^:]*:.+-global-model-ready)-[1-9][0-9]*$")


class _Auditor:
    def __init__(
        self,
        statements: Mapping[str, tuple[Statement, ...]],
        template_prefix: str,
        stand_ins: TemplateClients | None,
    ) -> None:
        self.statements, self.template_prefix = statements, template_prefix
        self.stand_ins = stand_ins
        self.stack_clients: dict[str, set[str]] = defaultdict(set)  # prefix -> client ids
        self.report = AuditReport()
        self.owners: dict[str, Owner] = {}
        self.expected: list[tuple[str, str, str]] = []
        # principal kind -> (statement key, action) pairs some allowed call used
        self.used_statements: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.test = "(before any test)"
        self.engine_keys = {ENGINE_KEY}

    def read(self, line: Mapping[str, Any]) -> None:
        kind_ = line.get("type")
        if kind_ == "principal":
            self.owners[line["access_key"]] = Owner(
                line["principal"], line["prefix"], line["region"]
            )
            if str(line["principal"]).startswith(CLIENT_PREFIX):
                client = str(line["principal"]).removeprefix(CLIENT_PREFIX)
                self.stack_clients[line["prefix"]].add(client)
        elif kind_ == "engine":
            self.engine_keys.add(str(line["access_key"]))
        elif kind_ == "test":
            self.test = str(line["nodeid"])
        elif kind_ == "expect":
            self.expected.append((line["principal"], line["action"], line["resource"]))
        elif kind_ == "unparsed":
            self.report.unparsed += 1
        elif kind_ == "call":
            self.report.calls += 1
            owner = self.owners.get(str(line["access_key"])) or engine_owner(line, self.engine_keys)
            if owner is None:
                self.report.harness_calls += 1
            else:
                self._judge(line, owner)

    def _expected(self, principal: str, action: str, resource: str) -> bool:
        for i, (p, a, r) in enumerate(self.expected):
            if p == principal and glob(a, action, case_sensitive=False) and glob(r, resource):
                del self.expected[i]  # one declaration covers one request
                return True
        return False

    def _as_template(self, call: Mapping[str, Any], owner: Owner) -> tuple[str, str]:
        """The principal whose template statements judge the call, and the resource."""
        # a stack of more than 200 clients has notice topic shards `-1`, `-2`...; the
        # template, synthesized with few clients, has one: every grant on the notice
        # topics names all shards (`StackArns.notice_topics`), so shard 0 stands for each
        resource = _SHARD.sub(r"\1", template_resource(call, owner, self.template_prefix))
        if self.stand_ins is None:
            return owner.principal, resource
        me = (
            owner.principal.removeprefix(CLIENT_PREFIX)
            if kind(owner.principal) == "client"
            else None
        )
        resource = rename_clients(resource, me, self.stack_clients[owner.prefix], self.stand_ins)
        judged = CLIENT_PREFIX + self.stand_ins.me if me is not None else owner.principal
        return judged, resource

    def _judge(self, call: Mapping[str, Any], owner: Owner) -> None:
        principal, action = owner.principal, str(call["action"])
        judged, resource = self._as_template(call, owner)
        request = Request(principal, action, resource, call.get("context") or {})
        decision = evaluate(self.statements.get(judged, ()), request)
        is_expected = self._expected(principal, action, str(call["resource"]))
        report = self.report
        if decision.allowed:
            report.used[kind(principal)][action] += 1
            for statement in decision.allowed_by:
                self.used_statements[kind(principal)].add(
                    (statement_key(statement), action.lower())
                )
            if is_expected:
                report.unexpected_allows.append(f"{principal} {action} {resource} ({self.test})")
            return
        if is_expected:
            report.expected_refusals += 1
            return
        reason = _reason(judged, self.statements, decision)
        key = (kind(principal), action, _shape(resource, owner), reason)
        refusal = report.refusals.get(key)
        if refusal is None:
            needed: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
            if request.context:
                needed["RequestContext"] = dict(request.context)
            refusal = report.refusals[key] = Refusal(principal, action, resource, reason, needed)
        refusal.count += 1
        refusal.tests.add(self.test)


def _shape(resource: str, owner: Owner) -> str:
    """Group refusals of the same kind: a client's own id varies."""
    return generic(resource, owner.principal)


def _reason(principal: str, statements: Mapping[str, tuple[Statement, ...]], decision: Any) -> str:
    if principal not in statements:
        return f"the template has no policy for principal {principal!r}"
    if decision.denied_by is not None:
        return f"explicitly denied by {decision.denied_by.name}"
    if decision.near_misses:
        return "; ".join(
            f"{s.name} matches but its condition fails: {', '.join(failed)}"
            for s, failed in decision.near_misses
        )
    return "no statement allows it"


# Granted for AWS services to act on the role's behalf (Lambda's log delivery, the event
# source mapping's ListStreams, SNS's use of the topic key, Step Functions' logging and
# tracing): no request of ours makes them, so the audit cannot see them used.
# s3:ListBucket likewise: S3 consults it to answer a missing key with 404, not 403.
SERVICE_ACTIONS = ("logs:*", "xray:*", "kms:*", "dynamodb:ListStreams", "s3:ListBucket")


def _unused(
    statements: Mapping[str, tuple[Statement, ...]],
    used: Mapping[str, set[tuple[str, str]]],
) -> list[str]:
    """Allow statements (or some of their actions) that no recorded call needed."""
    out: set[str] = set()
    for principal, principal_statements in statements.items():
        if principal.startswith(CLIENT_PREFIX) and not used.get("client"):
            continue  # no client ran at all; nothing to say about client roles
        if not principal.startswith(CLIENT_PREFIX) and not used.get(principal):
            out.add(f"{principal}: no call at all (its whole policy is unused)")
            continue
        for statement in principal_statements:
            if statement.effect != "Allow":
                continue
            key = statement_key(statement)
            hits = {a for k, a in used.get(kind(principal), set()) if k == key}
            idle = [
                a
                for a in statement.actions
                if not any(glob(a, h, case_sensitive=False) for h in hits)
                and not any(glob(s, a, case_sensitive=False) for s in SERVICE_ACTIONS)
            ]
            if idle:
                resources = ", ".join(generic(r, principal) for r in statement.resources)
                label = f" ({statement.sid})" if statement.sid else ""
                out.add(f"{kind(principal)}{label}: {', '.join(idle)} on {resources}")
    return sorted(out)
