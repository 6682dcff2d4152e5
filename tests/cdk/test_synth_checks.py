"""The synth as a gate: cdk-nag (AwsSolutions), cfn-lint, and `python app.py` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cdk.support import Synth, require_cdk

require_cdk()

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_s3 as s3  # noqa: E402

from fedasync.resources import ASL_PATH  # noqa: E402
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


def test_cfn_lint_reports_no_errors(default_synth: Synth) -> None:
    from cfnlint.api import lint_file

    template = default_synth.outdir / f"{default_synth.stack.artifact_id}.template.json"
    matches = lint_file(template)
    errors = [str(m) for m in matches if m.rule.id.startswith("E")]
    assert errors == []
    unexpected = [
        str(m)
        for m in matches
        if not m.rule.id.startswith("E") and m.rule.id not in TOLERATED_CFN_LINT_WARNINGS
    ]
    assert unexpected == []


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
    assert {"ClientQueueUrlAlpha", "ClientQueueUrlBeta"} <= set(template["Outputs"])
