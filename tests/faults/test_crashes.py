"""The aggregator crashes between any two of its writes; each retry completes the work once.

Crashes are injected into the real `ServerStore` (the handler's only door to AWS): the
wrapped call either raises before reaching AWS, or reaches AWS and raises after, as a
Lambda killed right after a write would. The stream then redelivers the record (partial
batch failure) and the retry must finish the job: same versions, byte for byte, as a run
without crashes, every update accepted exactly once, the execution SUCCEEDED.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest

from fedasync.server.store import ServerStore
from tests.faults.harness import assert_same_as, config, drive, stack_for


class InjectedCrashError(RuntimeError):
    pass


class Crash:
    """Make `ServerStore.<method>` crash `times` times, before or after the real call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str, when: str, times: int) -> None:
        self.method, self.when, self.left, self.fired = method, when, times, 0
        self._lock = threading.Lock()
        real = getattr(ServerStore, method)

        @functools.wraps(real)
        async def wrapped(store: ServerStore, *args: Any, **kwargs: Any) -> Any:
            if self.when == "before" and self._take():
                raise InjectedCrashError(f"crash before {method}")
            result = await real(store, *args, **kwargs)
            if self.when == "after" and self._take():
                raise InjectedCrashError(f"crash after {method} reached AWS")
            return result

        monkeypatch.setattr(ServerStore, method, wrapped)

    def _take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            self.fired += 1
            return True


POINTS = {
    # the new global object is written, the head/version commit is not
    "after-object-before-commit": ("transact", "before"),
    # the head is committed, the callback (success / heartbeat / notice) has not happened
    "after-commit-before-callback": ("transact", "after"),
    "before-the-callback": ("send_success", "before"),
    # the callback reached Step Functions, then the function died
    "during-the-callback": ("send_success", "after"),
    "after-a-heartbeat": ("send_heartbeat", "after"),
    "after-publishing-a-notice": ("publish", "after"),
}


CASES = [
    (point, kind)
    for point in sorted(POINTS)
    for kind in ("sync", "fedasync", "fedbuff")
    # sync rounds do not heartbeat: their callback is send_success
    if not (kind == "sync" and POINTS[point][0] == "send_heartbeat")
]


@pytest.mark.parametrize(("point", "kind"), CASES)
async def test_a_crash_between_two_writes_is_completed_exactly_once_by_the_retry(
    moto_server, prefix, reference, monkeypatch, point, kind
):
    method, when = POINTS[point]
    async with stack_for(moto_server, prefix) as stack:
        # GIVEN the aggregator will crash twice at this point
        crash = Crash(monkeypatch, method, when, times=2)
        # WHEN a scripted task runs to its end
        got = await drive(stack, config(kind, f"ref-{kind}"))
    # THEN the crashes happened, and the retries completed the work exactly once
    assert crash.fired >= 1, f"{point}: the crash was never reached"
    assert_same_as(got, reference[kind])
