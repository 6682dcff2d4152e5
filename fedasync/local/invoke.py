"""One Lambda invocation with the deployed function's timeout and memory size.

Lambda kills an invocation that runs past its timeout or grows past its memory size: the
invocation fails ("Task timed out after N seconds", `Runtime.OutOfMemory`) and the event
source mapping treats it as a failed batch (the stream retries it; an SQS message
becomes visible again after the queue's visibility timeout).

Here each invocation runs on a thread of its own, watched from the pump's loop:
- **timeout**: at the deadline the pump stops waiting and fails the invocation, and a
  `InvocationCutOff` is raised asynchronously in the handler's thread, so the handler's
  Python code stops at its next bytecode. The pump waits up to `CUT_GRACE_S` for that
  thread to end before the retry, so a function never overlaps itself where it can be
  helped.
- **memory**: the process's resident set is sampled every `SAMPLE_S` while the handler
  runs; the invocation's peak is the highest sample (and the kernel's high-water mark
  `VmHWM`, when it rose during the call) above the resident set at its start. Past the
  function's memory size the invocation is cut off as for a timeout, as `out of memory`.

Limits of fidelity (a thread cannot be killed, only left):
- A call blocked in C (a socket read, a numpy kernel, a wait on another thread) finishes
  before the cut-off can land. Work the handler handed to another thread (our handlers
  run their AWS calls on one shared loop thread, `server_lambdas/_runtime.py`) runs to
  its end: late writes can land after the invocation failed, as a request already in
  flight can when Lambda kills a runtime. Correctness rests on the handlers being
  idempotent (conditional writes), which at-least-once delivery requires anyway.
- `finally` blocks and context managers of the handler run on the cut-off; Lambda runs
  none. The next invocation is not a cold start: the process keeps its module state.
- Memory is counted for the whole process, not for the one invocation: what other
  threads allocate meanwhile counts too (over-counting); memory the handler takes from
  pages the process already holds, and spikes shorter than a sample that do not raise
  `VmHWM`, do not count (under-counting). The Lambda runtime's own baseline (the
  interpreter and imported modules, ~100-200 MB) is not counted, so the effective
  limit is looser than AWS's by that baseline.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import structlog

from fedasync.limits import FunctionLimits

log = structlog.get_logger()

SAMPLE_S = 0.02  # memory sampling interval while a handler runs
CUT_GRACE_S = 2.0  # how long a cut-off thread may take to end before the retry goes ahead
_MB = 1024 * 1024
_PROCESS = psutil.Process()
_STATUS = Path("/proc/self/status")


class InvocationCutOff(BaseException):
    """Raised inside a handler thread that Lambda would have killed.

    A BaseException, as KeyboardInterrupt is: a handler's `except Exception` must not
    swallow the kill and carry on."""


class InvocationKilledError(Exception):
    """The invocation's outcome when Lambda would have killed it."""

    def __init__(self, function: str, reason: str, detail: str) -> None:
        super().__init__(f"{function}: {detail}")
        self.function = function
        self.reason = reason  # "timeout" or "out_of_memory"
        self.detail = detail


def _resident() -> int:
    return int(_PROCESS.memory_info().rss)


def _high_water() -> int | None:
    """The kernel's peak resident set of this process (Linux `VmHWM`), in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Invocation:
    """The handler's thread and what it returned, handed back to the pump's loop."""

    def __init__(self, handler: Callable[..., Any], event: Any, context: Any) -> None:
        self._call = (handler, event, context)
        self._lock = threading.Lock()
        self._finished = False
        self.outcome: tuple[Any, BaseException | None] | None = None
        self.ended = threading.Event()
        self._context = contextvars.copy_context()  # the pump's credentials, as to_thread
        self.thread = threading.Thread(target=self._run, name="lambda-invocation", daemon=True)

    def _run(self) -> None:
        try:
            handler, event, context = self._call
            try:
                outcome: tuple[Any, BaseException | None] = (
                    self._context.run(handler, event, context),
                    None,
                )
            except BaseException as error:  # the pump judges every outcome
                outcome = (None, error)
            with self._lock:
                self._finished = True
                self.outcome = outcome
        except InvocationCutOff:  # landed after the handler returned; already failed
            pass
        finally:
            self.ended.set()

    def cut_off(self) -> bool:
        """Raise InvocationCutOff in the handler's thread; False if it had finished."""
        with self._lock:
            if self._finished or self.thread.ident is None:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread.ident), ctypes.py_object(InvocationCutOff)
            )
            return True


async def invoke_limited(
    handler: Callable[..., Any],
    event: Any,
    context: Any,
    limits: FunctionLimits,
    *,
    function: str,
) -> Any:
    """Run `handler(event, context)` within `limits`; raise InvocationKilledError past them."""
    call = _Invocation(handler, event, context)
    start, resident0, high0 = time.monotonic(), _resident(), _high_water()
    peak = 0
    call.thread.start()
    while True:
        ended = await asyncio.to_thread(call.ended.wait, SAMPLE_S)
        peak = max(peak, _resident() - resident0)
        if ended:
            high = _high_water()
            if high is not None and high0 is not None and high > high0:
                peak = max(peak, high - resident0)
        elapsed = time.monotonic() - start
        if peak > limits.memory_mb * _MB:
            detail = (
                f"Runtime exited with error: signal: killed (Runtime.OutOfMemory): "
                f"{peak / _MB:.0f} MB used, memory size {limits.memory_mb} MB"
            )
            return await _fail(call, function, "out_of_memory", detail)
        if ended:
            break
        if elapsed >= limits.timeout_s:
            detail = f"Task timed out after {limits.timeout_s:.2f} seconds"
            return await _fail(call, function, "timeout", detail)
    assert call.outcome is not None  # set before `ended`
    result, error = call.outcome
    if error is not None:
        raise error
    return result


async def _fail(call: _Invocation, function: str, reason: str, detail: str) -> Any:
    cut = call.cut_off()
    log.warning("pump.invocation_killed", pump=function, reason=reason, detail=detail)
    if cut and not await asyncio.to_thread(call.ended.wait, CUT_GRACE_S):
        # still blocked in C or waiting on another thread: left to finish on its own
        log.warning("pump.invocation_abandoned", pump=function, reason=reason)
    raise InvocationKilledError(function, reason, detail)
