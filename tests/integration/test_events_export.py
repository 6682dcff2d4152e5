"""`fedasync events export` from a live deployment's table, then `fedasync replay` of it."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from fedasync.cli import app
from tests.faults.harness import config, drive, stack_for


@pytest.mark.parametrize("kind", ["sync", "fedbuff"])
async def test_an_exported_ledger_replays_to_the_recorded_final_model(
    moto_server, prefix, tmp_path, kind
):
    # GIVEN a task that ran to its end on a stack (as on AWS: only the table and bucket remain)
    async with stack_for(moto_server, prefix) as stack:
        outcome = await drive(stack, config(kind, "exported"))
        where = ["--endpoint", stack.endpoints.endpoint_url, "--prefix", stack.spec.prefix]
        # WHEN its ledger is exported, objects along
        ledger, objects = tmp_path / "exported.jsonl", tmp_path / "objects"
        exported = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "events",
                "export",
                "exported",
                "--out",
                str(ledger),
                "--objects",
                str(objects),
                *where,
            ],
        )
        assert exported.exit_code == 0, exported.output
        # AND replayed, once from the folder and once straight from the bucket
        runs = [["--objects", str(objects)], where]
        replays = [
            await asyncio.to_thread(CliRunner().invoke, app, ["replay", str(ledger), *source])
            for source in runs
        ]
    # THEN both rebuild the recorded final model byte for byte
    assert outcome.status == "SUCCEEDED"
    for result in replays:
        assert result.exit_code == 0, result.output
        assert f"final sha256: {outcome.final_sha256}" in result.output


def test_exporting_an_unknown_task_is_a_clear_error(moto_server, tmp_path):
    result = CliRunner().invoke(
        app,
        ["events", "export", "ghost", "--endpoint", moto_server.endpoint_url, "--prefix", "nope"],
    )
    assert result.exit_code == 2
    assert "error:" in result.output
