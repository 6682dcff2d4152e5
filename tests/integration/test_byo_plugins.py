"""A user's trainer plugin on the embedded stack, the test playing the server: a plugin
that raises is retried and then stopped, and a plugin the task cannot use is refused at
once with one `error:` line. Nothing bad is ever uploaded. No TensorFlow needed."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from client.run import run_client
from client.trainers import TrainerFailedError, get_trainer
from tests.integration.test_client_cli import _stack_config
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    CLIENT,
    RUN_TIMEOUT_S,
    TASK,
    Server,
    config,
    server,
    silo,
    stack,
)

_LAUNCH = "import sys; from client.cli import client_app; sys.exit(client_app())"


async def _nothing_uploaded(server: Server) -> None:
    assert await server.updates() == []
    assert await server.local_objects() == []
    assert await server.multipart_uploads() == []


async def test_a_plugin_that_raises_in_fit_is_retried_then_stopped_with_nothing_uploaded(
    stack, server: Server, silo
):
    # GIVEN round 1 of a sync task announced, and a silo whose plugin raises in every fit,
    # allowed 3 failures in a row
    await server.publish(await server.put_global(1))
    trainer = get_trainer("tests.integration.byo_plugins:broken_factory")
    cfg = config(stack, max_train_failures=3)
    # WHEN the silo runs
    with capture_logs() as logs, pytest.raises(TrainerFailedError) as failed:
        await asyncio.wait_for(run_client(cfg, trainer=trainer, data=silo), RUN_TIMEOUT_S)
    # THEN each failure was logged with its error, the notice coming back for each retry
    failures = [e for e in logs if e["event"] == "client.train_failed"]
    assert [e["failures"] for e in failures] == [1, 2, 3]
    assert [e["retry_in_s"] for e in failures] == [1, 2, 0]  # 2**(n-1) s; 0: for the next run
    assert all(e["notice_version"] == 1 for e in failures)
    assert all("CUDA out of memory (simulated)" in e["error"] for e in failures)
    # AND the run stopped with an error saying what failed, how often, and what to do
    message = str(failed.value)
    assert "raised for 3 notice(s) in a row" in message
    assert "RuntimeError: CUDA out of memory (simulated)" in message
    assert "Fix the trainer" in message
    # AND nothing was uploaded; the notice is still on the queue for the next run
    await _nothing_uploaded(server)
    visible, in_flight = await server.queue_depth()
    assert visible + in_flight == 1


async def test_a_success_resets_the_failure_count(stack, server: Server, silo):
    # GIVEN a plugin that fails once, then trains
    calls: list[int] = []
    inner = get_trainer("numpy")

    class FlakyOnce:
        name = "flaky"
        init_weights = inner.init_weights
        evaluate = inner.evaluate

        def fit(self, weights, x, y, *, epochs, seed):
            calls.append(seed)
            if len(calls) == 1:
                raise OSError("disk hiccup")
            return inner.fit(weights, x, y, epochs=epochs, seed=seed)

    await server.publish(await server.put_global(1))
    stop = asyncio.Event()
    # WHEN it runs with max_train_failures 2, until its update is recorded
    task = asyncio.create_task(
        run_client(
            config(stack, max_train_failures=2), trainer=FlakyOnce(), data=silo, stop_event=stop
        )
    )
    for _ in range(int(RUN_TIMEOUT_S / 0.1)):
        if await server.updates() or task.done():
            break
        await asyncio.sleep(0.1)
    stop.set()
    report = await asyncio.wait_for(task, RUN_TIMEOUT_S)
    # THEN the retry trained and uploaded the one update, the same seed both times
    assert report.train_failures == 1
    assert [u.round_id for u in report.updates] == [1]
    assert calls[0] == calls[1]


def _client(stack, *args: str) -> list[str]:
    return [
        sys.executable, "-c", _LAUNCH, "run", "--task", TASK, "--client-id", CLIENT,
        "--data", "digits:0/3", "--heartbeat-interval", "0.5", "--visibility-timeout", "2",
        "--stack-config", _stack_config(stack), *args,
    ]  # fmt: skip


async def _run(command: list[str]) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S * 2)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


async def test_a_factory_path_that_does_not_import_is_one_error_line_and_exit_1(
    stack, server: Server
):
    # GIVEN round 1 announced
    await server.publish(await server.put_global(1))
    # WHEN a silo names a trainer module that does not exist
    code, lines = await _run(_client(stack, "--trainer", "hospital.models:cnn"))
    # THEN it exits 1 with one error line naming the path and the module
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1
    assert len(errors) == 1, lines
    assert "--trainer 'hospital.models:cnn'" in errors[0]
    assert "module 'hospital.models' does not import" in errors[0]
    assert "No module named 'hospital'" in errors[0]
    # AND nothing was uploaded, the notice untouched
    await _nothing_uploaded(server)
    assert await server.queue_depth() == (1, 0)


async def test_a_model_that_is_not_the_tasks_is_one_error_line_and_nothing_uploaded(
    stack, server: Server
):
    # GIVEN round 1 announced with the task's model: dense/kernel (64, 10), dense/bias (10,)
    await server.publish(await server.put_global(1))
    # WHEN a silo's plugin builds a model of 32 inputs
    code, lines = await _run(
        _client(stack, "--trainer", "tests.integration.byo_plugins:narrow_factory")
    )
    # THEN it exits 1 with one error line naming the first tensor that differs, and how
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1
    assert len(errors) == 1, lines
    # (the client's check of its data against the task's model, before training, is the
    # first to see it: the trainer's model for this data is not the task's)
    assert "tests.integration.byo_plugins:narrow_factory" in errors[0]
    assert "tensor 'dense/kernel' of shape (32, 10)" in errors[0]
    assert "model has (64, 10)" in errors[0]
    # AND nothing was uploaded; the notice stays for a silo with the right model
    await _nothing_uploaded(server)
    visible, in_flight = await server.queue_depth()
    assert visible + in_flight == 1
