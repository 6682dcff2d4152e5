"""`fedasync events export` from a live deployment's table, then `fedasync replay` of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedasync.cli import app
from tests.faults.harness import config, drive, stack_for
from tests.integration.test_local_up import clean_env, run


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


async def test_replay_from_the_bucket_signs_as_the_operator_of_the_stack_config(
    moto_server, prefix, tmp_path
):
    # GIVEN a finished task, its exported ledger, and the stack config `local up` writes
    async with stack_for(moto_server, prefix) as stack:
        outcome = await drive(stack, config("sync", "signed"))
        stack_json = tmp_path / "stack.json"
        stack.endpoints.save(stack_json)
        ledger = tmp_path / "signed.jsonl"
        where = ["--stack-config", str(stack_json)]
        exported = await asyncio.to_thread(
            CliRunner().invoke, app, ["events", "export", "signed", "--out", str(ledger), *where]
        )
        assert exported.exit_code == 0, exported.output
        # WHEN it is replayed straight from the bucket in a terminal whose default
        # credentials are invented (as any key but a principal's is, under enforcement)
        invented = {"AWS_ACCESS_KEY_ID": "AKIAINVENTED0000", "AWS_SECRET_ACCESS_KEY": "x" * 40}
        # (PYTHONPATH: this checkout's code, whatever the environment has installed)
        env = {**clean_env(), **invented, "PYTHONPATH": str(Path(__file__).parents[2])}
        runs = [
            await asyncio.to_thread(run, ["replay", str(ledger), *args], env, tmp_path, 90)
            for args in (where, ["--endpoint", stack.endpoints.endpoint_url])
        ]
    # THEN with the stack config it signs as the operator and rebuilds the final model;
    # with the endpoint alone it signs with the invented keys and is refused, one error line
    signed, unsigned = runs
    assert signed.returncode == 0, signed.stderr
    assert f"final sha256: {outcome.final_sha256}" in signed.stdout
    assert unsigned.returncode == 2, unsigned.stdout + unsigned.stderr
    assert unsigned.stderr.startswith("error:"), unsigned.stderr
