"""Ending a task: the head becomes `final.safetensors`, clients hear it, the wait completes."""

from __future__ import annotations

from typing import Any

import structlog

from fedasync.core import keys
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def finish_task(
    store: ServerStore, task_name: str, reason: str, *, token: str | None
) -> dict[str, Any]:
    """Idempotent: the first caller writes the final model; every caller may answer a token."""
    view = TaskView.from_item(task_name, await store.get_task(task_name))
    if not view.finished:
        data = await store.get_object(keys.global_key(task_name, view.head_version))
        await store.put_object(keys.final_key(task_name), data, view.head_sha256)
        op = store.update_op(
            task_name,
            keys.TASK_SK,
            {
                "finished": reason,
                "final_version": view.head_version,
                "final_sha256": view.head_sha256,
            },
            condition="attribute_not_exists(#finished)",
        )
        await store.update(op)
        view = TaskView.from_item(task_name, await store.get_task(task_name))
        log.info(
            "task.finished",
            reason=view.finished,
            version=view.head_version,
            sha256=view.head_sha256,
        )
    item = await store.get_task(task_name) or {}
    final_version = int(item.get("final_version", view.head_version))
    await store.publish(view.notice(final_version, final=True), view.cfg.clients)
    result = {
        "finished": True,
        "reason": view.finished,
        "version": final_version,
        "sha256": item.get("final_sha256", view.head_sha256),
    }
    if token:
        await store.send_success(token, result)
    return result
