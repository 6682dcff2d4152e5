"""Creating a task and resuming it: global version 0, the TASK item, one execution per attempt.

A task runs as one Step Functions execution per *attempt*. Execution names are unique for
90 days, so they are never just the task's name (a task deleted and created again under
the same name would be refused for 90 days): each is `{task}-{incarnation}-{attempt}`,
where the incarnation is 10 random hex digits drawn when the TASK item is created. A task
whose execution was aborted, timed out or failed can be resumed: a new attempt continues
from what the server committed (sync: the next round; async: the head, its counters and
buffer as stored), and the ledger, built from the table, runs on across attempts.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import structlog

from fedasync.aws.executions import execution_arn_for as execution_arn
from fedasync.core import codec, keys
from fedasync.core.codec import Array
from fedasync.core.config import TaskConfig
from fedasync.core.deltas import check_model_fits
from fedasync.core.errors import ConfigError, FedAsyncError
from fedasync.core.initial import check_aggregatable
from fedasync.core.items import task as t
from fedasync.core.items.expressions import ITEM_ABSENT, absent, all_of, equals
from fedasync.core.items.task import TaskItem
from fedasync.core.privacy import central_dp, check_budget
from fedasync.resources import TABLE_PARTITION_KEY
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView, spec_to_json

log = structlog.get_logger()

# Execution statuses after which an attempt can be followed by another.
RESUMABLE = ("ABORTED", "TIMED_OUT", "FAILED")


class ResumeRefusedError(FedAsyncError):
    """A task that cannot be resumed now: finished, still running, or not started."""

    reason = "resume_refused"


def execution_name(task_name: str, incarnation: str, attempt: int) -> str:
    """At most 64 + 1 + 10 + 1 + 4 = 80 characters, Step Functions' limit."""
    return f"{task_name}-{incarnation}-{attempt}"


def dp_release_limit(cfg: TaskConfig) -> int | None:
    """Central DP: the releases the task's budget buys (`check_budget`, which refuses a
    delta too large for the protected units or a budget of no release). The unit central
    DP protects is a silo's whole contribution (user-level DP, McMahan et al. 2018), so
    delta is checked against 1/N for the N silos of the task. Computed here, on the
    operator's machine: the aggregate function enforces the count without the accountant."""
    if cfg.privacy is None or not central_dp(cfg):
        return None
    return check_budget(cfg.privacy, len(cfg.clients))


async def start_task(
    store: ServerStore, state_machine_arn: str, cfg: TaskConfig, initial: Mapping[str, Array]
) -> str:
    """Idempotent for the same config: a second start returns the same execution."""
    who = f"initial model of task {cfg.task_name!r}"
    blob = codec.encode(initial, who=who)
    check_aggregatable(len(blob), cfg, who)  # before anything is created
    check_model_fits(cfg, codec.spec_of(initial), who)
    sha = codec.sha256_bytes(blob)
    releases = dp_release_limit(cfg)
    await store.put_object(keys.global_key(cfg.task_name, 0), blob, sha)
    item = t.new_item(
        cfg.task_name,
        keys.TASK_SK,
        config=cfg.model_dump_json(),
        spec=spec_to_json(codec.spec_of(initial)),
        sha=sha,
        size=len(blob),
        incarnation=secrets.token_hex(5),
        releases=releases,
    )
    if not await store.put_item(item, condition=ITEM_ABSENT):
        existing = await store.get_task(cfg.task_name) or {}
        if (
            TaskConfig.model_validate_json(TaskItem.from_item(cfg.task_name, existing).config)
            != cfg
        ):
            raise ConfigError(f"task {cfg.task_name!r} already exists with a different config")
        item = existing
    return await _start_attempt(store, state_machine_arn, item, cfg.execution_input())


async def _start_attempt(
    store: ServerStore, state_machine_arn: str, item: Mapping[str, Any], payload: dict[str, Any]
) -> str:
    """StartExecution for the TASK item's current attempt. The same name and input again
    give the same running execution; a closed one is refused and its ARN returned."""
    return await store.executions.start(state_machine_arn, attempt_execution_name(item), payload)


async def resume_task(store: ServerStore, state_machine_arn: str, task_name: str) -> dict[str, Any]:
    """Start the next attempt of a task whose execution ended without finishing it.

    Retryable: the attempt counter moves once, conditionally on the attempt that was read,
    and the current attempt's execution is (re)started under its own name, so a crash
    between the two steps is completed by the next call."""
    item = await store.get_task(task_name)
    task = TaskItem.from_item(task_name, item)
    view = TaskView.of(task)
    assert item is not None  # from_item raised otherwise
    if view.finished:
        final = view.head_version if task.final_version is None else task.final_version
        raise ResumeRefusedError(
            f"task {task_name!r} finished ({view.finished}) at version "
            f"{final}; there is nothing to resume"
        )
    attempt = task.attempt
    ended = await _execution_status(store, current_execution_arn(state_machine_arn, item))
    if ended == "RUNNING":
        raise ResumeRefusedError(
            f"task {task_name!r}: its execution (attempt {attempt}) is still RUNNING; "
            "stop it first (`fedasync task stop`) or let it end"
        )
    if ended != "NONE":  # this attempt ran and ended: the next one
        if ended not in RESUMABLE:
            raise ResumeRefusedError(
                f"task {task_name!r}: attempt {attempt} ended {ended}; only an execution "
                f"that was {', '.join(RESUMABLE)} can be followed by another"
            )
        item = await _next_attempt(store, item, ended)
    start_round = view.head_version if view.cfg.mode == "sync" else 0
    arn = await _start_attempt(
        store, state_machine_arn, item, view.cfg.execution_input(start_round=start_round)
    )
    attempt = TaskItem.from_item(task_name, item).attempt
    log.info("task.resumed", attempt=attempt, version=view.head_version, after=ended)
    return {
        "task_name": task_name,
        "attempt": attempt,
        "execution_arn": arn,
        "version": view.head_version,
        "after": ended,
    }


async def _next_attempt(store: ServerStore, item: dict[str, Any], ended: str) -> dict[str, Any]:
    """attempt + 1, once (the condition names the attempt read); the cause and error the
    last attempt left on the task move into its entry of the attempt list."""
    task = TaskItem.from_item(str(item.get(TABLE_PARTITION_KEY)), item)
    task_name, attempt = task.task_name, task.attempt
    history = [dict(a) for a in task.attempts or [{"attempt": attempt}]]
    history[-1] = t.ended_entry(history[-1], ended, task.failure)
    history.append(t.attempt_entry(attempt + 1, time.time()))
    op = store.update_op(
        task_name,
        keys.TASK_SK,
        t.next_attempt(attempt + 1, history),
        condition=all_of(equals(t.ATTEMPT, ":attempt"), absent(t.FINISHED)),
        condition_values={":attempt": attempt},
        remove=t.FAILURE,
    )
    if not await store.update(op):
        log.info("task.resume_raced", attempt=attempt)  # another resume moved it
    return await store.get_task(task_name) or {}


def attempt_execution_name(item: Mapping[str, Any]) -> str:
    """The execution name of the TASK item's current attempt (a task created before
    attempts existed ran as one execution named after the task)."""
    task = TaskItem.from_item(str(item[TABLE_PARTITION_KEY]), item)
    if not task.incarnation:
        return task.task_name
    return execution_name(task.task_name, task.incarnation, task.attempt)


def current_execution_arn(state_machine_arn: str, item: Mapping[str, Any]) -> str:
    return execution_arn(state_machine_arn, attempt_execution_name(item))


async def _execution_status(store: ServerStore, arn: str) -> str:
    return await store.executions.status(arn)
