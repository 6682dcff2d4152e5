"""The call audit as a pytest plugin (loaded by tests/conftest.py).

Before any test, it points `FEDASYNC_AUDIT_LOG` at a fresh file: every moto server the
run starts (the session's, a `fedasync local up` subprocess's) appends what each request
asks IAM for, and every provisioning whose key is whose. At the end of the run it
synthesizes the CDK template once (two stand-in clients: every client is judged as
"itself", every other client of its stack as "another"), judges every
call of a stack principal by that principal's policies, prints the actions each
principal used, the refusals and the grants no call used, and fails the run on a
refusal. `--call-audit=off` (or FEDASYNC_CALL_AUDIT=off) turns it off.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fedasync.local.moto_iam import ENV_AUDIT_LOG

TEMPLATE_PREFIX = "fedasync"
_STATE: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--call-audit",
        choices=("on", "off"),
        default=os.environ.get("FEDASYNC_CALL_AUDIT", "on"),
        help="judge every AWS request of the embedded stack's principals by the "
        "synthesized template's policies (default: on)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--call-audit") != "on" or hasattr(config, "workerinput"):
        return
    directory = Path(tempfile.mkdtemp(prefix="fedasync-audit-"))
    path = directory / "calls.jsonl"
    path.touch()
    os.environ[ENV_AUDIT_LOG] = str(path)
    _STATE["path"] = path


def _append(line: dict[str, Any]) -> None:
    path = os.environ.get(ENV_AUDIT_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(line) + "\n")


def pytest_runtest_setup(item: pytest.Item) -> None:
    _append({"type": "test", "nodeid": item.nodeid})


def expect_refused(principal: str, action: str, resource: str) -> None:
    """Declare the next request of `principal` matching (globs) as refused on purpose."""
    _append({"type": "expect", "principal": principal, "action": action, "resource": resource})


def _statements(client_ids: list[str]) -> Any:
    """The template's statements per principal, its clients the audit's stand-ins."""
    from tests.cdk.support import require_cdk

    try:
        require_cdk()
    except pytest.skip.Exception as skipped:
        raise RuntimeError(f"the CDK template cannot be synthesized: {skipped}") from None
    from fedasync.deployment import Deployment
    from fedasync.policy.template import principal_statements
    from fedasync.resources import ASL_PATH, ClientSpec
    from infra.app import build_app

    out = Path(tempfile.mkdtemp(prefix="fedasync-audit-cdk-"))
    clients_file = out / "clients.yaml"
    clients_file.write_text(
        f"prefix: {TEMPLATE_PREFIX}\nclients:\n"
        + "".join(f"  - client_id: {c}\n" for c in client_ids or ["audit-placeholder"]),
        encoding="utf-8",
    )
    app, stack = build_app(
        context={"clients_file": str(clients_file)},
        outdir=str(out / "cdk.out"),
        asl_definition=ASL_PATH.read_text(encoding="utf-8"),
        bundle_dir=out / "no-bundle",
    )
    assembly = app.synth()
    template = assembly.get_stack_by_name(stack.stack_name).template
    nested = stack.nested_templates(assembly.directory)  # the clients' roles
    spec = Deployment(
        prefix=TEMPLATE_PREFIX, clients=tuple(ClientSpec(client_id=c) for c in client_ids)
    )
    return principal_statements(template, spec, nested=nested)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = _STATE.get("path")
    if path is None:
        return
    from fedasync.policy.audit import audit, read_lines
    from fedasync.policy.audit_names import TemplateClients
    from fedasync.policy.audit_render import render

    lines = read_lines(path)
    if not any(line.get("type") == "principal" for line in lines):
        _STATE["summary"] = ["call audit: no embedded stack ran; nothing to judge"]
        return
    try:
        stand_ins = TemplateClients()
        statements = _statements([stand_ins.me, stand_ins.other])
    except Exception as error:  # say so loudly: an unjudged run is no evidence
        _STATE["summary"] = [
            "CALL AUDIT NOT DONE: " + str(error),
            f"  {sum(1 for x in lines if x.get('type') == 'call')} recorded calls were not judged",
        ]
        return
    report = audit(lines, statements, TEMPLATE_PREFIX, stand_ins)
    _STATE["summary"] = [*render(report), f"(recorded in {path})"]
    if not report.ok:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    summary = _STATE.get("summary")
    if summary:
        terminalreporter.section("call audit")
        for line in summary:
            terminalreporter.write_line(line)
