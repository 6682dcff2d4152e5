"""CDK fixtures: each app is synthesised once per session (a synth takes seconds).

Synths here never touch the network: the Lambda asset falls back to our source alone
(an empty bundle directory), and the ASL is the real file, or a minimal stand-in while
the real one does not exist yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fedasync.resources import ASL_PATH
from tests.cdk.support import MINIMAL_ASL, TRAINER_ARN, Synth


@pytest.fixture(scope="session")
def asl_text() -> str:
    if ASL_PATH.is_file():
        return ASL_PATH.read_text(encoding="utf-8")
    return json.dumps(MINIMAL_ASL, indent=2)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, asl_text: str) -> Callable[..., Synth]:
    from infra.app import build_app

    cache: dict[str, Synth] = {}

    def run(**context: str) -> Synth:
        key = json.dumps(context, sort_keys=True)
        if key not in cache:
            outdir = tmp_path_factory.mktemp("cdk.out")
            app, stack = build_app(
                context=context,
                outdir=str(outdir),
                asl_definition=asl_text,
                bundle_dir=outdir / "no-bundle",
            )
            assembly = app.synth()
            template = assembly.get_stack_by_name(stack.stack_name).template
            nested = stack.nested_templates(assembly.directory)
            cache[key] = Synth(
                app=app, stack=stack, template=template, outdir=outdir, nested=nested
            )
        return cache[key]

    return run


@pytest.fixture(scope="session")
def default_synth(synth: Callable[..., Synth]) -> Synth:
    """infra/clients.yaml: three clients, principals defaulting to the account root."""
    return synth()


@pytest.fixture(scope="session")
def solo_clients_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clients") / "clients.yaml"
    path.write_text(
        f"prefix: solo\nclients:\n  - client_id: lab-1\n    principal: {TRAINER_ARN}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def solo_synth(synth: Callable[..., Synth], solo_clients_file: Path) -> Synth:
    """One client whose role a principal in another account assumes."""
    return synth(clients_file=str(solo_clients_file))
