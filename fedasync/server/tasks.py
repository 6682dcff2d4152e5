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
from fedasync.core.privacy import central_dp, check_budget
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
    item = {
        "task_name": cfg.task_name,
        "sk": keys.TASK_SK,
        "config": cfg.model_dump_json(),
        "spec": spec_to_json(codec.spec_of(initial)),
        "status": "STARTING",
        "head_version": 0,
        "head_sha256": sha,
        "initial_sha256": sha,
        "head_size": len(blob),
        "absorbed": 0,
        "buffered": 0,
        "buffer_weight": 0.0,
        "created_at": time.time(),
        "incarnation": secrets.token_hex(5),
        "attempt": 1,
        "attempts": [{"attempt": 1, "started_at": time.time()}],
        **({"dp_release_limit": releases, "dp_releases": 0} if releases is not None else {}),
    }
    if not await store.put_item(item, condition="attribute_not_exists(#sk)"):
        existing = await store.get_task(cfg.task_name) or {}
        if TaskConfig.model_validate_json(existing["config"]) != cfg:
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
    view = TaskView.from_item(task_name, item)
    assert item is not None  # from_item raised otherwise
    if view.finished:
        raise ResumeRefusedError(
            f"task {task_name!r} finished ({view.finished}) at version "
            f"{item.get('final_version', view.head_version)}; there is nothing to resume"
        )
    attempt = int(item.get("attempt", 1))
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
    log.info("task.resumed", attempt=item["attempt"], version=view.head_version, after=ended)
    return {
        "task_name": task_name,
        "attempt": int(item["attempt"]),
        "execution_arn": arn,
        "version": view.head_version,
        "after": ended,
    }


async def _next_attempt(store: ServerStore, item: dict[str, Any], ended: str) -> dict[str, Any]:
    """attempt + 1, once (the condition names the attempt read); the cause and error the
    last attempt left on the task move into its entry of the attempt list."""
    task_name, attempt = str(item["task_name"]), int(item.get("attempt", 1))
    history = [dict(a) for a in item.get("attempts") or [{"attempt": attempt}]]
    history[-1].update({"ended": ended, **{k: item[k] for k in ("cause", "error") if item.get(k)}})
    history.append({"attempt": attempt + 1, "started_at": time.time()})
    op = store.update_op(
        task_name,
        keys.TASK_SK,
        {"attempt": attempt + 1, "status": "RESUMING", "attempts": history},
        condition="#attempt = :attempt AND attribute_not_exists(#finished)",
        condition_values={":attempt": attempt},
        remove=("cause", "error"),
    )
    if not await store.update(op):
        log.info("task.resume_raced", attempt=attempt)  # another resume moved it
    return await store.get_task(task_name) or {}


def attempt_execution_name(item: Mapping[str, Any]) -> str:
    """The execution name of the TASK item's current attempt (a task created before
    attempts existed ran as one execution named after the task)."""
    if not item.get("incarnation"):
        return str(item["task_name"])
    return execution_name(str(item["task_name"]), str(item["incarnation"]), int(item["attempt"]))


def current_execution_arn(state_machine_arn: str, item: Mapping[str, Any]) -> str:
    return execution_arn(state_machine_arn, attempt_execution_name(item))


async def _execution_status(store: ServerStore, arn: str) -> str:
    return await store.executions.status(arn)
