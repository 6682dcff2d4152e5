"""SIGINT/SIGTERM: the first asks the run to stop, the second forces the exit."""

from __future__ import annotations

import asyncio
import os
import signal

from client.signals import install_stop_handlers


async def test_first_signal_requests_a_stop_and_the_second_forces_one():
    stop = asyncio.Event()
    forced: list[int] = []
    uninstall = install_stop_handlers(stop, force=forced.append)
    try:
        # WHEN SIGTERM arrives once
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
        # THEN the run is asked to stop, nothing forced yet
        assert forced == []
        # WHEN a second signal arrives
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            if forced:
                break
            await asyncio.sleep(0.01)
        # THEN the exit is forced
        assert forced == [signal.SIGINT]
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
