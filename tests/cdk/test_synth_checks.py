"""The synth as a gate: cdk-nag (AwsSolutions), cfn-lint, and `python app.py` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cdk.support import Synth, require_cdk

require_cdk()

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_s3 as s3  # noqa: E402

from fedasync.deployment import Deployment  # noqa: E402
from fedasync.policy.template import principal_statements  # noqa: E402
from fedasync.resources import ASL_PATH, ClientSpec  # noqa: E402
from infra.config import INFRA_DIR  # noqa: E402
from infra.nag import add_nag  # noqa: E402

pytestmark = pytest.mark.cdk

# CDK writes an explicit DependsOn on a function's role next to the GetAtt that already
# implies it; cfn-lint notes the redundancy. Harmless, and not ours to remove.
TOLERATED_CFN_LINT_WARNINGS = {"W3005"}


def _nag_violations(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.is_file():
        return []
    data = json.loads(report.read_text(encoding="utf-8"))
    return [
        f"{v['ruleName']} at {[c['constructPath'] for c in v['violatingConstructs']]}"
        for plugin in data.get("pluginReports", [])
        if plugin["pluginName"] == "AwsSolutions"
        for v in plugin.get("violations", [])
    ]


def test_cdk_nag_finds_nothing_unacknowledged(default_synth: Synth, solo_synth: Synth) -> None:
    # The synth itself fails on an unacknowledged finding; the report must be clean too.
    assert _nag_violations(default_synth.outdir) == []
    assert _nag_violations(solo_synth.outdir) == []


def test_cdk_nag_is_really_wired_in(tmp_path: Path) -> None:
    # GIVEN an app with our nag wiring and a bucket that allows plain HTTP
    app = cdk.App(outdir=str(tmp_path))
    s3.Bucket(cdk.Stack(app, "Loose"), "Bucket")
    add_nag(app)
    # WHEN it is synthesised THEN validation fails
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert any("AwsSolutions-S10" in v for v in _nag_violations(tmp_path))


def test_every_acknowledgement_gives_a_specific_reason(default_synth: Synth) -> None:
    key = cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    reasons: dict[str, str] = {}
    for construct in default_synth.app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == key:
                for rule, reason in dict(entry.data).items():
                    reasons[f"{construct.node.path}: {rule}"] = str(reason)
    assert reasons, "expected the documented acknowledgements"
    for where, reason in reasons.items():
        assert len(reason) >= 60, f"{where}: reason too thin: {reason!r}"


def _cfn_lint(synth: Synth) -> list[str]:
    """cfn-lint's findings on the stack's template and each nested stack's template."""
    from cfnlint.api import lint_file

    files = [synth.outdir / f"{synth.stack.artifact_id}.template.json"]
    files += [synth.outdir / nested.template_file for nested in synth.stack.client_stacks]
    return [
        f"{path.name}: {m}"
        for path in files
        for m in lint_file(path)
        if m.rule.id.startswith("E") or m.rule.id not in TOLERATED_CFN_LINT_WARNINGS
    ]


def test_cfn_lint_reports_no_errors(default_synth: Synth) -> None:
    assert len(default_synth.stack.client_stacks) == 1
    assert _cfn_lint(default_synth) == []


# CloudFormation's per-template quotas
MAX_RESOURCES, MAX_OUTPUTS, MAX_PARAMETERS = 500, 200, 200


@pytest.mark.slow
def test_two_hundred_clients_synthesize_within_cloudformations_limits(
    synth: Callable[..., Synth],
) -> None:
    # GIVEN 200 clients (one stack stopped at ~80: 6 resources per client, 500 per stack)
    clients = [f"silo-{i:03d}" for i in range(200)]
    # WHEN the app is synthesized (the synth itself fails on any cdk-nag finding)
    big = synth(clients=",".join(clients))
    # THEN the clients sit in ceil(200 / 75) = 3 nested stacks of 75, 75 and 50 clients,
    # 6 resources each (queue, DLQ, two queue policies, subscription, role), no outputs
    counts = [len(t["Resources"]) for t in big.nested.values()]
    assert counts == [450, 450, 300]
    templates = [big.template, *big.nested.values()]
    for template in templates:
        assert len(template["Resources"]) < MAX_RESOURCES
        assert len(template.get("Outputs", {})) < MAX_OUTPUTS
        assert len(template.get("Parameters", {})) < MAX_PARAMETERS
    assert len(big.template["Outputs"]) == 11  # no output per client (the server table is one)
    # AND every client has its role, named by the rule, with its own statements
    roles = {
        r["Properties"]["RoleName"] for r in big.all_resources("AWS::IAM::Role").values()
        if "RoleName" in r["Properties"]
    }  # fmt: skip
    assert roles == {f"fedasync-client-{c}" for c in clients}
    assert _nag_violations(big.outdir) == []
    assert _cfn_lint(big) == []
    # AND the audit reads every client's policy from its nested stack, each exactly as
    # tight as the first one's but for the id (silo-000 in Clients0, silo-199 in Clients2)
    spec = Deployment(clients=tuple(ClientSpec(client_id=c) for c in clients))
    statements = principal_statements(big.template, spec, nested=big.nested)
    assert {p for p in statements if p.startswith("client:")} == {f"client:{c}" for c in clients}
    first = statements["client:silo-000"]
    for client in ("silo-074", "silo-075", "silo-199"):
        renamed = [
            repr(s).replace("silo-000", client).replace("client:silo-000", f"client:{client}")
            for s in first
        ]
        assert [repr(s) for s in statements[f"client:{client}"]] == renamed


@pytest.mark.skipif(not ASL_PATH.is_file(), reason="stepfunctions/fl_task.asl.json not written yet")
def test_python_app_py_synthesises_on_its_own_into_cdk_outdir(tmp_path: Path) -> None:
    # cdk.json says `python app.py`; run exactly that, in infra/, with a small client list
    command = json.loads((INFRA_DIR / "cdk.json").read_text(encoding="utf-8"))["app"]
    assert command == "python app.py"
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path),
        "CDK_CONTEXT_JSON": json.dumps({"clients": "alpha,beta"}),
    }
    done = subprocess.run(
        [sys.executable, "app.py"],
        cwd=INFRA_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    template = json.loads((tmp_path / "FedAsyncServer.template.json").read_text(encoding="utf-8"))
    assert {"Region", "AccountId", "Prefix", "BucketName"} <= set(template["Outputs"])
    assert [r["Type"] for r in template["Resources"].values()].count(
        "AWS::CloudFormation::Stack"
    ) == 1  # the two clients' nested stack
