"""Ending a task: the head becomes `final.safetensors`, clients hear it, the wait completes."""

from __future__ import annotations

import time
from typing import Any

import structlog

from fedasync.core import codec, keys
from fedasync.core.errors import ChecksumMismatchError
from fedasync.core.items import round as r
from fedasync.core.items import task as t
from fedasync.core.items.expressions import absent, all_of, equals
from fedasync.core.items.task import TaskItem
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()
_MAX_TRIES = 20


async def _decide(store: ServerStore, task_name: str, reason: str) -> TaskView:
    """Fix the final version in one conditional write, against the head it was read with.

    An update committed between the read and the write moves the head and fails the
    condition, so the decision is taken again on the new head: the final model is always
    the head at the moment the task was marked finished, never an older version. Every
    later commit is refused (`attribute_not_exists(finished)` on the absorb transaction).
    """
    for _ in range(_MAX_TRIES):
        view = TaskView.from_item(task_name, await store.get_task(task_name))
        if view.finished:
            return view
        op = store.update_op(
            task_name,
            keys.TASK_SK,
            t.finished(reason, view.head_version, view.head_sha256, time.time()),
            condition=all_of(absent(t.FINISHED), equals(t.HEAD_VERSION, ":head")),
            condition_values={":head": view.head_version},
        )
        if await store.update(op):
            log.info("task.finished", reason=reason, version=view.head_version)
    raise RuntimeError(f"task {task_name!r}: the head kept moving while it was being finished")


async def finish_task(
    store: ServerStore, task_name: str, reason: str, *, token: str | None
) -> dict[str, Any]:
    """Idempotent: the first caller decides the final version; every caller (a retry after
    a crash included) rewrites the same final object, repeats the notice and may answer a
    token, so a crash between any two of these steps is completed by the next try.

    The recorded SHA-256 of the final version is the truth: a stored object that no longer
    matches it is corrupt and is never published. Then `ChecksumMismatchError` says so and
    what the finish waits for; the decision stands, and a later try completes it once the
    object's bytes are back."""
    view = await _decide(store, task_name, reason)
    item = TaskItem.from_item(task_name, await store.get_task(task_name))
    final_version = view.head_version if item.final_version is None else item.final_version
    final_sha = view.head_sha256 if item.final_sha256 is None else item.final_sha256
    key = keys.global_key(task_name, final_version)
    data = await store.get_object(key)
    if codec.sha256_bytes(data) != final_sha:
        log.error("task.final_corrupt", version=final_version, s3_key=key, sha256=final_sha)
        raise ChecksumMismatchError(
            f"task {task_name!r} is finished ({view.finished}) at version {final_version}, "
            f"but {key!r} no longer matches its recorded SHA-256 {final_sha}: the object was "
            "rewritten after its commit and is corrupt, so it is not published as the final "
            "model; the finish waits for that version's original bytes at that key"
        )
    await store.put_object(keys.final_key(task_name), data, final_sha)
    await store.publish(view.notice(final_version, final=True), view.cfg.clients)
    result = r.finish_answer(view.finished, final_version, final_sha)
    if token:
        await store.send_success(token, result)
    return result
