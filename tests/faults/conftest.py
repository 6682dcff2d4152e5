"""Fault-suite fixtures: the clean reference runs every faulty run is compared with."""

from __future__ import annotations

import pytest

from tests.faults.harness import KINDS, Outcome, config, drive, stack_for


@pytest.fixture(scope="session")
async def reference(moto_server) -> dict[str, Outcome]:
    """Each kind once on a clean stack: one delivery per record, no failures."""
    out = {}
    async with stack_for(moto_server, "reference") as stack:
        for kind in KINDS:
            out[kind] = await drive(stack, config(kind, f"ref-{kind}"))
            assert out[kind].status == "SUCCEEDED", out[kind].cause
    return out
