"""`client run` as a process: JSON logs off a TTY, a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from client.cli import client_app
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    CLIENT,
    RUN_TIMEOUT_S,
    TASK,
    Server,
    server,
    stack,
)

_LAUNCH = "import sys; from client.cli import client_app; sys.exit(client_app())"


def _stack_config(stack) -> str:
    """What `local up` writes: the silo signs with its own key from it."""
    path = Path(tempfile.mkdtemp()) / "stack.json"
    path.write_text(stack.endpoints.model_dump_json())
    return str(path)


def _command(stack) -> list[str]:
    return [
        sys.executable,
        "-c",
        _LAUNCH,
        "run",
        "--task",
        TASK,
        "--client-id",
        CLIENT,
        "--endpoint",
        stack.endpoints.endpoint_url,
        "--prefix",
        stack.spec.prefix,
        "--trainer",
        "numpy",
        "--data",
        "digits:0/3",
        "--heartbeat-interval",
        "0.5",
        "--visibility-timeout",
        "2",
        "--stack-config",
        _stack_config(stack),
    ]


async def test_sigterm_stops_the_silo_cleanly_and_logs_are_json_with_context(
    stack, server: Server, wait_until
):
    # GIVEN a silo process that has uploaded its update for round 1
    await server.publish(await server.put_global(1))
    process = await asyncio.create_subprocess_exec(
        *_command(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        await wait_until(server.updates, timeout_s=RUN_TIMEOUT_S)
        # WHEN it receives SIGTERM
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
    # THEN it exits normally, saying it was stopped after one update
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "stopped; 1 update(s) uploaded" in stdout.decode()
    # AND its logs are JSON lines carrying task, client and version
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    [uploaded] = [e for e in events if e["event"] == "client.update_uploaded"]
    assert (uploaded["task_name"], uploaded["client_id"], uploaded["version"]) == (TASK, CLIENT, 1)
    assert any(e["event"] == "client.stop_requested" for e in events)
    # AND by default it held out a fifth of its data and scored the global model on it
    [started] = [e for e in events if e["event"] == "client.started"]
    held = started["eval_examples"]
    assert 0.15 < held / (held + started["num_examples"]) < 0.25
    [item] = await server.updates()
    assert item["num_examples"] == started["num_examples"]
    assert {"eval_accuracy", "eval_loss", "train_accuracy", "train_loss"} <= set(item["metrics"])


def test_an_unknown_trainer_is_a_clear_error_not_a_traceback():
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        client_app, ["run", "--task", TASK, "--client-id", CLIENT, "--trainer", "torch"]
    )
    assert result.exit_code == 1
    assert "unknown trainer 'torch'; available: keras, numpy" in result.output
