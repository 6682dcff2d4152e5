"""structlog, configured once: JSON lines when not on a TTY, a console renderer on one.

Bind `task_name`, `client_id`, `version`/`round_id` with `bound_contextvars` at the start
of each unit of work; log event names (`update.accepted`), not sentences.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
import structlog.testing
import structlog.tracebacks

_configured = False

# A key naming one of these holds a secret: its value is masked, whatever it looks like.
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|authorization|session", re.I)
# Opaque blobs the length of a Step Functions task token or an STS session token.
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_-]{100,}")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_PREFIX = 6
_known: deque[str] = deque(maxlen=256)


class StderrLogger:
    """Writes each line to whatever `sys.stderr` is at the moment of writing.

    structlog's `PrintLoggerFactory(file=sys.stderr)` keeps the stream it was given at
    configure time. A process configured while something had swapped `sys.stderr` (click's
    `CliRunner`, pytest's capture, an embedding host) then writes every later line to that
    swapped stream, long after its owner closed it: `ValueError: I/O operation on closed
    file` from an unrelated log call. Resolving the stream per line follows the swap and
    its undoing.
    """

    _lock = threading.Lock()  # one line at a time, across threads (as PrintLogger does)

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg
    failure = err = msg


def _stderr_logger(*_args: Any) -> StderrLogger:
    return StderrLogger()


def remember_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a later log line (e.g. a task token just received)."""
    if value and len(value) >= 8 and value not in _known:
        _known.append(value)


def mask(value: str) -> str:
    # a short secret keeps less of itself: never more than a quarter
    return f"{value[: min(_PREFIX, len(value) // 4)]}…(redacted)"


def _scrub_text(text: str) -> str:
    for secret in (*_known, *(os.environ.get(n) or "" for n in _SECRET_ENV)):
        if len(secret) >= 8 and secret in text:
            text = text.replace(secret, mask(secret))
    return _OPAQUE.sub(lambda m: mask(m.group(0)), text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {k: _scrub_pair(k, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def _scrub_pair(key: Any, value: Any, depth: int) -> Any:
    if isinstance(key, str) and _SECRET_KEY.search(key) and value is not None:
        return mask(value) if isinstance(value, str) else "(redacted)"
    return _scrub(value, depth)


def redact(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: no credential or task token reaches a log line in full."""
    return {k: _scrub_pair(k, v, 0) for k, v in event_dict.items()}


def configure(
    *,
    level: str | None = None,
    json: bool | None = None,
    force: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Idempotent: the first call wins unless `force`; safe to call from every entry point.

    Lines go to `stream` if given, else to whatever `sys.stderr` is when each is written.
    """
    global _configured  # noqa: PLW0603 - one process-wide logging setup is the point
    if _configured and not force:
        return
    level_name = (level or os.environ.get("FEDASYNC_LOG_LEVEL", "INFO")).upper()
    use_json = json if json is not None else not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        # Tracebacks as data, but never with frame locals: they hold task tokens and keys.
        processors.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    # last before rendering, so it also sees exception dicts and bound context
    processors.extend([redact, renderer])
    current = structlog.get_config()["processors"]
    if any(isinstance(p, structlog.testing.LogCapture) for p in current):
        # a `capture_logs` block is running (a test asserting on logs): a handler's first
        # configure inside it takes the level, and keeps the capture (the same list)
        processors = current
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=_stderr_logger if stream is None else structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # moto's embedded web server logs every request through werkzeug; keep it quiet
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
