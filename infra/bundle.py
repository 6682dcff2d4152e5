"""Build the server Lambda bundle, reproducibly and without Docker.

    python infra/bundle.py            # -> infra/build/lambda/, prints its digest

Wheels come from the package index for Lambda's platform (manylinux x86_64, CPython
3.12) with
`pip install --platform ... --only-binary=:all:`, so nothing is compiled here and the
host's OS and Python do not leak in. Then our code (`fedasync/` without the embedded
stack, `server_lambdas/`) is copied beside them. Same inputs, same bytes: no bytecode,
no `bin/` scripts (their shebangs name this machine's Python), fixed mtimes.

`cdk synth` never runs this (it needs the network); the stack uses the built directory
when it exists and otherwise a source-only asset, with a warning.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent
BUNDLE_DIR = INFRA_DIR / "build" / "lambda"
REQUIREMENTS = REPO_ROOT / "server_lambdas" / "requirements.txt"
MARKER = ".fedasync-bundle.json"

LAMBDA_PYTHON_VERSION = "3.12"
# Lambda's python3.12 runs on Amazon Linux 2023, glibc 2.34. pip does not widen an
# explicit --platform to older glibc tags, so every compatible tag is listed: 2.34 down
# to 2.17 (manylinux2014), and the legacy alias for wheels tagged only with it.
LAMBDA_GLIBC_MINOR = 34
LAMBDA_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(LAMBDA_GLIBC_MINOR, 16, -1)),
    "manylinux2014_x86_64",
)
# 1980-01-01: the earliest time a zip entry can hold, so zipping keeps it exactly.
FIXED_MTIME = 315532800

# (source relative to the repo, parts of its path to leave out)
SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the embedded stack needs moto, which the Lambda does not; the operator tools and the
    # CLI run on an operator's machine, never in a Lambda
    ("fedasync", ("local", "ops", "cli")),
    ("server_lambdas", ()),
)
SKIPPED_NAMES = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", "requirements.txt"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
FORBIDDEN_DISTRIBUTIONS = ("tensorflow", "keras", "tensorboard")


def pip_command(target: Path, requirements: Path = REQUIREMENTS) -> list[str]:
    platforms = [arg for platform in LAMBDA_PLATFORMS for arg in ("--platform", platform)]
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        *platforms,
        "--implementation",
        "cp",
        "--python-version",
        LAMBDA_PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]


def _skipped(relative: Path, excluded: tuple[str, ...]) -> bool:
    parts = relative.parts
    if parts and parts[0] in excluded:
        return True
    return any(p in SKIPPED_NAMES for p in parts) or relative.suffix in SKIPPED_SUFFIXES


def stage_sources(dest: Path, repo_root: Path = REPO_ROOT) -> list[str]:
    """Copy our packages into `dest`; return the top-level sources that were missing."""
    missing = []
    for name, excluded in SOURCES:
        source = repo_root / name
        if not source.is_dir():
            missing.append(name)
            continue
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_dir() or _skipped(relative, excluded):
                continue
            target = dest / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return missing


def normalise(root: Path) -> None:
    """Drop what differs between two builds of the same inputs; pin every mtime."""
    for cache in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for compiled in [*root.rglob("*.pyc"), *root.rglob("*.pyo")]:
        compiled.unlink()
    shutil.rmtree(root / "bin", ignore_errors=True)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)


def tree_digest(root: Path) -> str:
    """SHA-256 over sorted (relative path, content) pairs: equal trees, equal digests."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def forbidden_packages(root: Path) -> list[str]:
    """Top-level entries of the bundle that belong to TensorFlow and friends."""
    return sorted(
        p.name for p in root.iterdir() if p.name.lower().split("-")[0] in FORBIDDEN_DISTRIBUTIONS
    )


def build(dest: Path = BUNDLE_DIR, *, install: bool = True) -> str:
    """Build the bundle into `dest` (replacing it) and return its tree digest."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if install:
        subprocess.run(pip_command(staging), check=True)
    missing = stage_sources(staging)
    if missing:
        raise FileNotFoundError(f"cannot bundle: {missing} not found under {REPO_ROOT}")
    bad = forbidden_packages(staging)
    if bad:
        raise RuntimeError(f"the Lambda bundle must not contain TensorFlow; found {bad}")
    normalise(staging)
    digest = tree_digest(staging)
    marker = {
        "digest": digest,
        "python": LAMBDA_PYTHON_VERSION,
        "platforms": list(LAMBDA_PLATFORMS),
    }
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.utime(staging / MARKER, (FIXED_MTIME, FIXED_MTIME))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return digest


def is_built(path: Path = BUNDLE_DIR) -> bool:
    return (path / MARKER).is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR)
    args = parser.parse_args(argv)
    digest = build(args.out)
    sys.stdout.write(f"bundle {args.out} sha256 {digest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
