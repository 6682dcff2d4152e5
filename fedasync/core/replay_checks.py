"""Checks of a replay's result against what the server recorded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedasync.core import codec


def head_problems(head: Any, versions: Mapping[int, bytes]) -> list[str]:
    """The replay must end at the head the server recorded (TASK), every version from 1 to
    it rebuilt: a version lost from the ledger (an update's verdict gone, say) shows here."""
    if not isinstance(head, Mapping) or head.get("version") is None:
        return []  # a ledger from before heads were recorded
    version, sha = int(head["version"]), head.get("sha256")
    problems = [f"version {v} (up to the head {version}) was not rebuilt"
                for v in range(1, version + 1) if v not in versions]  # fmt: skip
    if max(versions) != version:
        problems.append(f"the replay ends at version {max(versions)}; the head is {version}")
    elif sha is not None and codec.sha256_bytes(versions[version]) != sha:
        problems.append(
            f"the rebuilt head version {version} has SHA-256 "
            f"{codec.sha256_bytes(versions[version])}; the server recorded {sha}"
        )
    return problems
