"""structlog, configured once: JSON lines when not on a TTY, a console renderer on one.

Bind `task_name`, `client_id`, `version`/`round_id` with `bound_contextvars` at the start
of each unit of work; log event names (`update.accepted`), not sentences.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
import structlog.tracebacks

_configured = False


def configure(*, level: str | None = None, json: bool | None = None, force: bool = False) -> None:
    """Idempotent: the first call wins unless `force`; safe to call from every entry point."""
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
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # moto's embedded web server logs every request through werkzeug; keep it quiet
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
