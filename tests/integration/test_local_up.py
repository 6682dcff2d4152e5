"""`fedasync local up` in its own process; the operator and two silos in theirs.

The three-terminal walk-through of the README, as a test: every command is a separate
process that knows the stack only through the environment `local up` printed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

FEDASYNC = [sys.executable, "-c", "from fedasync.cli import app; app()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without the test session's own stack settings; the
    children import this checkout's code (PYTHONPATH), not whatever is installed."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDASYNC_") and k != "MOTO_PORT"
    }
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


class StackProcess:
    """`fedasync local up` as a child; its stdout read line by line on a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = (cwd / "stack.err").open("w")
        self.proc = subprocess.Popen(
            [*FEDASYNC, "local", "up", *args],
            cwd=cwd,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, marker: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"local up exited early: {self.seen}")
            self.seen.append(line)
            if line.startswith(marker):
                return list(self.seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def exports(lines: list[str]) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in lines)
    return {k: v for k, v in (p for p in pairs if len(p) == 2) if k.isupper()}


def run(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 30):
    return subprocess.run(
        [*FEDASYNC, *args],
        check=False,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def silo(index: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`fedasync client run` for silo-INDEX on its half of digits, numpy trainer."""
    args = ["client", "run", "--task", "duo", "--client-id", f"silo-{index}", "--trainer",
            "numpy", "--data", f"digits:{index}/2", "--heartbeat-interval", "1",
            "--visibility-timeout", "30"]  # fmt: skip
    return subprocess.Popen(
        [*FEDASYNC, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


TASK_YAML = (
    "task_name: duo\nmode: sync\nclients: [silo-0, silo-1]\nrounds: 2\nround_timeout_s: 120\n"
)


def test_local_up_serves_separate_client_processes_through_a_sync_task(tmp_path):
    # GIVEN `fedasync local up` on a free port, in its own process
    port = free_port()
    stack = StackProcess(
        ["--port", str(port), "--prefix", "lu", "--clients", "silo-0,silo-1",
         "--stack-config", str(tmp_path / "stack.json")],
        tmp_path,
    )  # fmt: skip
    silos: list[subprocess.Popen[str]] = []
    try:
        banner = stack.read_until("ready:", timeout_s=60)
        env = {**clean_env(), **exports([x for x in banner if x.startswith("export ")])}
        assert env["FEDASYNC_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert env["FEDASYNC_PREFIX"] == "lu"
        names = json.loads((tmp_path / "stack.json").read_text())
        assert names["table"] == "lu-table"
        assert set(names["clients"]) == {"silo-0", "silo-1"}
        # AND the AWS_* exports are the operator's own keys (invented ones are refused)
        assert env["AWS_ACCESS_KEY_ID"] == names["operator"]["aws_access_key_id"]
        assert env["AWS_SECRET_ACCESS_KEY"] == names["operator"]["aws_secret_access_key"]

        # WHEN the operator starts a 2-round task and two silos run in separate processes
        (tmp_path / "task.yaml").write_text(TASK_YAML)
        started = run(["task", "start", "--config", "task.yaml"], env, tmp_path)
        assert started.returncode == 0, started.stderr
        assert "task 'duo' started (sync)" in started.stdout
        silos = [silo(i, env, tmp_path) for i in range(2)]
        outputs = [p.communicate(timeout=90)[0] for p in silos]

        # THEN both silos end on the final model and the task's execution SUCCEEDED
        assert [p.returncode for p in silos] == [0, 0], outputs
        for i, out in enumerate(outputs):
            assert f"client 'silo-{i}', task 'duo': final; 2 update(s) uploaded" in out
        status = run(["task", "status", "duo", "--json"], env, tmp_path)
        assert status.returncode == 0, status.stderr
        summary = json.loads(status.stdout)
        assert summary["execution"]["status"] == "SUCCEEDED"
        assert (summary["version"], summary["finished"]) == (2, "rounds")
        assert (summary["updates"]["accepted"], summary["updates"]["rejected"]) == (4, 0)

        # WHEN the stack process gets SIGTERM THEN it shuts down cleanly with exit code 0
        stack.proc.send_signal(signal.SIGTERM)
        assert stack.proc.wait(30) == 0
        assert stack.read_until("stopped", timeout_s=5)[-1] == "stopped"
    finally:
        for p in silos:
            if p.poll() is None:
                p.kill()
        stack.close()
