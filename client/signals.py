"""SIGINT/SIGTERM: the first asks for a graceful stop, the second stops at once.

Graceful means: abort the multipart upload in flight, stop heartbeating, and leave the
SQS message alone so it becomes visible again for the next run. If that clean-up itself
hangs (a dead network), a second signal exits without waiting for it; an upload
interrupted that way never becomes a visible object either, S3 only keeps its parts
until the bucket's abort-incomplete-multipart lifecycle rule collects them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import structlog

log = structlog.get_logger()

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_now(signum: int) -> None:
    log.warning("client.stop_forced", signal=signal.Signals(signum).name)
    os._exit(128 + signum)


def install_stop_handlers(
    stop: asyncio.Event, *, force: Callable[[int], None] = _exit_now
) -> Callable[[], None]:
    """Route the stop signals to `stop` (then to `force`); returns the uninstaller."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("client.stop_requested", signal=signal.Signals(signum).name)
            stop.set()
        else:
            force(signum)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)

    def uninstall() -> None:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)

    return uninstall
