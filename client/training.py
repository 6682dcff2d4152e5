"""The user's trainer, called from the client loop; what happens when it raises.

An error in `fit`/`evaluate` (a bug in a plugin, an out-of-memory, a bad batch) is not
the notice's fault: it is logged with its traceback, the notice is given back to the
queue (not deleted, nothing uploaded) and comes again after a short, growing delay, so
the silo retries. After `max_train_failures` notices in a row failed, the run stops with
a `TrainerFailedError` that says so. A `TrainerSetupError` (the factory does not build,
the model is not the task's) is not retried: the user must fix it first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from client.inbox import Held
from client.state import RunState
from client.trainers.base import TrainerFailedError, TrainerSetupError

log = structlog.get_logger()

T = TypeVar("T")


class TrainingFailed(Exception):  # noqa: N818 - an outcome the trainer loop handles
    """The trainer raised `error` while working on a notice."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


async def call_trainer(state: RunState, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn` on the silo's training thread; its errors become `TrainingFailed`."""
    try:
        return await state.in_compute(fn, *args, **kwargs)
    except TrainerSetupError:
        raise
    except Exception as exc:
        raise TrainingFailed(exc) from exc


async def retry_later(state: RunState, held: Held, failed: TrainingFailed) -> None:
    """Give the notice back for a retry, or end the run after too many failures."""
    state.train_failures += 1
    state.report.train_failures += 1
    limit = state.cfg.max_train_failures
    delay = (
        0
        if state.train_failures >= limit
        else min(state.cfg.visibility_timeout_s, 2 ** (state.train_failures - 1))
    )
    log.error(
        "client.train_failed",
        notice_version=held.version,
        seq=held.notice.seq,
        error=str(failed),
        failures=state.train_failures,
        max_failures=limit,
        retry_in_s=delay,
        exc_info=failed.error,
    )
    await state.ports.postpone(state.inbox.release(held), delay)
    if state.train_failures >= limit:
        raise TrainerFailedError(
            f"trainer {state.trainer.name!r} raised for {limit} notice(s) in a row of task "
            f"{state.cfg.task_name!r} (last on version {held.version}: {failed}); nothing "
            "was uploaded for them and the notice is back on the queue. Fix the trainer "
            "and run the client again"
        ) from failed.error
