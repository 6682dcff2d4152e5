"""Where log lines go: the process's stderr of the moment, never a stream someone closed."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog
from structlog.testing import capture_logs

from fedasync import logs


def test_a_line_logged_after_a_swapped_stderr_was_closed_goes_to_the_current_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN logging configured while sys.stderr was swapped (as click's CliRunner does),
    #   and that stream then closed and the swap undone
    swapped, current = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    logs.configure(level="INFO", json=True, force=True)
    swapped.close()
    monkeypatch.setattr(sys, "stderr", current)
    # WHEN something logs
    structlog.get_logger().info("moto.stopped", returncode=0)
    # THEN no "I/O operation on closed file": the line is on the stderr of now
    (line,) = current.getvalue().splitlines()
    assert json.loads(line)["event"] == "moto.stopped"


def test_a_bound_logger_kept_across_a_swap_follows_the_swap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a logger bound once (as a long-lived object keeps it) while stderr is `first`
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure(level="INFO", json=True, force=True)
    log = structlog.get_logger().bind(client_id="a")
    log.info("poll.started")
    # WHEN stderr is swapped and the same bound logger logs again
    monkeypatch.setattr(sys, "stderr", second)
    log.info("poll.stopped")
    # THEN each line went to the stderr of its moment
    assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["poll.started"]
    assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == ["poll.stopped"]


def test_each_test_starts_with_logging_not_yet_configured() -> None:
    # GIVEN the suite's fresh_logging fixture (earlier tests here configured with force)
    # WHEN a test begins
    # THEN the first configure of this test is the one that counts, as in a new process
    assert logs._configured is False


def test_a_first_configure_inside_capture_logs_keeps_the_capture() -> None:
    # GIVEN a test capturing logs, and logging not yet configured
    with capture_logs() as logged:
        # WHEN a handler configures logging on its first call, then logs
        logs.configure(level="INFO")
        structlog.get_logger().info("update.accepted", version=1)
        structlog.get_logger().debug("pump.idle")
    # THEN the capture saw the event, at the level the configure set
    assert [(e["event"], e["log_level"]) for e in logged] == [("update.accepted", "info")]
