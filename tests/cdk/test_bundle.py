"""The Lambda bundle: our code plus numpy & co for Lambda's platform, never TensorFlow."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from infra import bundle

pytestmark = pytest.mark.cdk

REQUIRED = {"numpy", "pydantic", "structlog", "safetensors", "aws-lambda-powertools", "aioboto3"}


def _requirements() -> dict[str, str]:
    pins = {}
    for raw in bundle.REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_requirements_pin_the_runtime_dependencies_and_never_tensorflow() -> None:
    pins = _requirements()
    assert set(pins) >= REQUIRED
    assert pins["aioboto3"] == "15.5.0"
    assert not [n for n in pins if n.startswith(bundle.FORBIDDEN_DISTRIBUTIONS)]


def test_pip_installs_binary_wheels_for_lambda_without_docker(tmp_path: Path) -> None:
    command = bundle.pip_command(tmp_path)
    assert command[1:4] == ["-m", "pip", "install"]
    assert "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == bundle.LAMBDA_PYTHON_VERSION
    assert command[command.index("--implementation") + 1] == "cp"
    assert command[command.index("--target") + 1] == str(tmp_path)
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert "manylinux2014_x86_64" in platforms
    assert "manylinux_2_28_x86_64" in platforms
    assert "docker" not in " ".join(command).lower()


def test_sources_are_staged_without_the_embedded_stack_or_caches(tmp_path: Path) -> None:
    bundle.stage_sources(tmp_path)
    assert (tmp_path / "fedasync" / "resources.py").is_file()
    assert not (tmp_path / "fedasync" / "local").exists()
    assert not (tmp_path / "fedasync" / "ops").exists()
    assert not (tmp_path / "fedasync" / "cli").exists()
    assert not list(tmp_path.rglob("__pycache__"))
    assert not list(tmp_path.rglob("*.pyc"))


def test_two_builds_of_the_same_sources_are_identical(tmp_path: Path) -> None:
    # GIVEN no network (install=False) WHEN the bundle is built twice THEN same digest
    first = bundle.build(tmp_path / "one", install=False)
    second = bundle.build(tmp_path / "two", install=False)
    assert first == second
    assert bundle.is_built(tmp_path / "one")
    mtimes = {os.stat(p).st_mtime for p in (tmp_path / "one").rglob("*")}
    assert mtimes == {bundle.FIXED_MTIME}


def test_a_bundle_with_tensorflow_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow-2.18.0.dist-info").mkdir()
    (tmp_path / "numpy").mkdir()
    assert bundle.forbidden_packages(tmp_path) == ["tensorflow", "tensorflow-2.18.0.dist-info"]


@pytest.mark.skipif(not bundle.is_built(), reason="run `python infra/bundle.py` to build it")
def test_the_built_bundle_holds_numpy_and_our_code_but_not_tensorflow() -> None:
    assert (bundle.BUNDLE_DIR / "numpy").is_dir()
    assert (bundle.BUNDLE_DIR / "fedasync").is_dir()
    assert (bundle.BUNDLE_DIR / "server_lambdas").is_dir()
    assert bundle.forbidden_packages(bundle.BUNDLE_DIR) == []
    assert not (bundle.BUNDLE_DIR / "bin").exists()
