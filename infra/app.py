"""The CDK app: `cdk synth` / `cdk deploy` from infra/, or `python app.py` on its own.

Context (all optional): `-c clients_file=clients.yaml`, `-c clients=a,b,c`,
`-c prefix=fedasync`. Synthesises into $CDK_OUTDIR when set, else infra/cdk.out.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # `cdk` runs `python app.py` inside infra/; our packages live at the repo root.
    sys.path.insert(0, str(REPO_ROOT))

import aws_cdk as cdk  # noqa: E402

from fedasync.resources import ASL_PATH  # noqa: E402
from infra.bundle import BUNDLE_DIR  # noqa: E402
from infra.config import INFRA_DIR, load_config  # noqa: E402
from infra.nag import add_nag  # noqa: E402
from infra.stack import FedAsyncStack  # noqa: E402

CDK_JSON = INFRA_DIR / "cdk.json"


def feature_flags() -> dict[str, Any]:
    """cdk.json's context, so `python app.py` behaves as `cdk synth` does."""
    data = json.loads(CDK_JSON.read_text(encoding="utf-8"))
    return dict(data.get("context", {}))


def read_asl(path: Path = ASL_PATH) -> str:
    if not path.is_file():
        raise FileNotFoundError(
            f"the state machine definition {path} is missing; the stack inlines it"
        )
    return path.read_text(encoding="utf-8")


def build_app(
    *,
    context: dict[str, Any] | None = None,
    outdir: str | None = None,
    asl_definition: str | None = None,
    bundle_dir: Path = BUNDLE_DIR,
) -> tuple[cdk.App, FedAsyncStack]:
    """The app with its one stack and the cdk-nag pack; call `.synth()` on it."""
    app = cdk.App(
        context={**feature_flags(), **(context or {})},
        outdir=outdir or os.environ.get("CDK_OUTDIR") or str(INFRA_DIR / "cdk.out"),
    )
    config = load_config(
        clients=app.node.try_get_context("clients"),
        clients_file=app.node.try_get_context("clients_file"),
        prefix=app.node.try_get_context("prefix"),
    )
    stack = FedAsyncStack(
        app,
        "FedAsyncServer",
        stack_name=f"{config.spec.prefix}-server",
        description="fedasync: asynchronous federated learning server (Step Functions, "
        "Lambda, SNS, SQS, S3, DynamoDB) and per-client queues and roles",
        config=config,
        asl_definition=asl_definition if asl_definition is not None else read_asl(),
        bundle_dir=bundle_dir,
    )
    add_nag(app)
    return app, stack


def main() -> None:
    app, _ = build_app()
    app.synth()


if __name__ == "__main__":
    main()
