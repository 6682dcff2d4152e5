"""The TASK item (`sk = TASK`): config, spec, status, head, async counters and buffer,
tokens, attempts, the finish. `TaskItem.from_item` reads one as every build wrote it;
the builders below give the values of the server's writes on it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedasync.core.errors import TaskNotFoundError
from fedasync.core.items._values import int_or

# async: clients owed a go-ahead after a rejection (a string set)
WAITING = "waiting"
# async, with an outlier filter: the delta norms of the last accepted updates
RECENT_NORMS = "recent_norms"
# the last refused global model, for `task status`
REFUSED = "global_refused"
# named by the writes' conditions (`fedasync.core.items.expressions`)
STATUS, HEAD_VERSION, FINISHED, ABSORBED, BUFFERED, ATTEMPT = (
    "status", "head_version", "finished", "absorbed", "buffered", "attempt"
)  # fmt: skip
# the attributes the state machine writes on a failure, which the next attempt moves into
# its entry of `attempts`
FAILURE = ("cause", "error")


@dataclass(frozen=True)
class TaskItem:
    """A TASK item as stored, each attribute typed (with the fallbacks older items need)."""

    task_name: str
    config: str  # the TaskConfig's JSON
    spec: str  # the model spec's JSON (`task_view.spec_to_json`)
    status: str
    head_version: int
    head_sha256: str
    head_size: int
    absorbed: int
    buffered: int
    buffer_weight: float
    buffer_sha256: str | None
    buffer_clients: tuple[str, ...]  # central DP, FedBuff: the silos of the open buffer
    buffer_max_weight: float
    token: str | None
    finished: str | None
    final_version: int | None
    final_sha256: str | None
    started_at: float | None
    created_at: Any
    initial_sha256: str | None
    latest_metrics: Mapping[str, Any]
    waiting: frozenset[str]
    attempt: int
    attempts: tuple[Mapping[str, Any], ...]
    incarnation: str | None
    optimizer_sha256: str | None
    dp_releases: int
    dp_release_limit: int | None
    dp_flushed: frozenset[str]
    recent_norms: tuple[float, ...]
    refused: Mapping[str, Any] | None
    execution_arn: str | None
    failure: Mapping[str, Any]  # what the state machine left of a failed attempt

    @property
    def cause(self) -> Any:
        """Why the state machine failed the current attempt (None: it did not)."""
        return self.failure.get("cause")

    @classmethod
    def from_item(cls, task_name: str, item: Mapping[str, Any] | None) -> TaskItem:
        if item is None:
            raise TaskNotFoundError(f"task {task_name!r} does not exist")
        return cls(
            task_name=str(item.get("task_name", task_name)),
            config=str(item["config"]),
            spec=str(item["spec"]),
            status=str(item.get("status", "STARTING")),
            head_version=int(item.get(HEAD_VERSION, 0)),
            head_sha256=str(item["head_sha256"]),
            head_size=int(item.get("head_size", 0)),
            absorbed=int(item.get(ABSORBED, 0)),
            buffered=int(item.get(BUFFERED, 0)),
            buffer_weight=float(item.get("buffer_weight", 0.0)),
            buffer_sha256=item.get("buffer_sha256") or None,
            buffer_clients=tuple(str(c) for c in item.get("dp_buffer_clients") or ()),
            buffer_max_weight=float(item.get("dp_buffer_max_weight", 0.0)),
            token=item.get("token") or None,
            finished=item.get(FINISHED) or None,
            final_version=int(item["final_version"]) if "final_version" in item else None,
            final_sha256=str(item["final_sha256"]) if "final_sha256" in item else None,
            started_at=float(item["started_at"]) if item.get("started_at") is not None else None,
            created_at=item.get("created_at"),
            initial_sha256=item.get("initial_sha256"),
            latest_metrics=dict(item.get("latest_metrics") or {}),
            waiting=frozenset(str(c) for c in item.get(WAITING) or ()),
            attempt=int(item.get(ATTEMPT, 1)),
            attempts=tuple(dict(a) for a in item.get("attempts") or ()),
            incarnation=str(item["incarnation"]) if item.get("incarnation") else None,
            optimizer_sha256=item.get("optimizer_sha256") or None,
            dp_releases=int(item.get("dp_releases", 0)),
            dp_release_limit=(
                int(item["dp_release_limit"]) if item.get("dp_release_limit") is not None else None
            ),
            dp_flushed=frozenset(str(c) for c in item.get("dp_flushed_clients") or ()),
            recent_norms=tuple(float(x) for x in item.get(RECENT_NORMS) or ()),
            refused=dict(item[REFUSED]) if isinstance(item.get(REFUSED), Mapping) else None,
            execution_arn=str(item.get("execution_arn") or "") or None,
            failure={k: item[k] for k in FAILURE if item.get(k)},
        )


@dataclass(frozen=True)
class TaskPeek:
    """What a watcher reads of a TASK item that may not exist yet (or be partial): never
    raises; whatever is missing is None."""

    config: Any = None  # the config as stored (JSON text), as written
    status: str | None = None
    head_version: int | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> TaskPeek:
        i = item or {}
        return cls(i.get("config"), str(i["status"]) if i.get("status") else None,
                   int_or(i.get(HEAD_VERSION)))  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    """The last refused global model (`REFUSED`): why, at which version, and the updates
    it dropped (the triggering one first)."""

    reason: str | None = None
    detail: str | None = None
    version: int | None = None
    updates: tuple[str, ...] = ()

    @classmethod
    def from_item(cls, value: Any) -> Refusal:
        if not isinstance(value, Mapping):
            return cls()
        version = value.get("version")
        return cls(
            reason=value.get("reason"),
            detail=value.get("detail"),
            version=int(version) if version is not None else None,
            updates=tuple(str(u) for u in value.get("updates") or ()),
        )

    @classmethod
    def in_values(cls, values: Mapping[str, Any]) -> Refusal:
        """The refusal a set of TASK values writes (none: empty)."""
        return cls.from_item(values.get(REFUSED))


def add_discarded(values: dict[str, Any], dropped: Sequence[str]) -> None:
    """The refusal in the TASK values `values` also names the updates `dropped` (a FedBuff
    buffer committed before the batch), after the one that triggered it."""
    entry = values[REFUSED]
    first, *rest = entry["updates"]
    entry["updates"] = [first, *dropped, *rest]


def head_size_in(values: Mapping[str, Any], default: int) -> int:
    """The head's size that a set of TASK values writes (else `default`)."""
    return int(values.get("head_size", default))


def new_item(
    task_name: str, sk: str, *, config: str, spec: str, sha: str, size: int,
    incarnation: str, releases: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The TASK item `task start` puts (version 0, the first attempt)."""
    return {
        "task_name": task_name,
        "sk": sk,
        "config": config,
        "spec": spec,
        "status": "STARTING",
        HEAD_VERSION: 0,
        "head_sha256": sha,
        "initial_sha256": sha,
        "head_size": size,
        ABSORBED: 0,
        BUFFERED: 0,
        "buffer_weight": 0.0,
        "created_at": time.time(),
        "incarnation": incarnation,
        ATTEMPT: 1,
        "attempts": [{"attempt": 1, "started_at": time.time()}],
        **({"dp_release_limit": releases, "dp_releases": 0} if releases is not None else {}),
    }


def head(version: int, sha: str, size: int) -> dict[str, Any]:
    """A new head version (sync: a round's commit)."""
    return {HEAD_VERSION: version, "head_sha256": sha, "head_size": size}


def head_model(sha: str, size: int) -> dict[str, Any]:
    """The head's model when the version moves with the async counters (`counters`)."""
    return {"head_sha256": sha, "head_size": size}


def counters(absorbed: int, buffered: int, buffer_weight: float, version: int) -> dict[str, Any]:
    """Async: the TASK counters after an absorbed update."""
    return {ABSORBED: absorbed, BUFFERED: buffered, "buffer_weight": buffer_weight,
            HEAD_VERSION: version}  # fmt: skip


def buffer_dropped() -> dict[str, Any]:
    """Async: a refused global model drops the FedBuff buffer."""
    return {BUFFERED: 0, "buffer_weight": 0.0}


def dp_buffer(clients: Sequence[str], max_weight: float) -> dict[str, Any]:
    """Central DP with FedBuff: the open buffer's silos and their largest weight."""
    return {"dp_buffer_clients": list(clients), "dp_buffer_max_weight": max_weight}


def dp_releases(releases: int) -> dict[str, Any]:
    return {"dp_releases": releases}


def dp_flushed(clients: Sequence[str]) -> dict[str, Any]:
    return {"dp_flushed_clients": list(clients)}


def buffer_object(sha: str) -> dict[str, Any]:
    return {"buffer_sha256": sha}


def optimizer(sha: str) -> dict[str, Any]:
    return {"optimizer_sha256": sha}


def latest_metrics(reports: Mapping[str, Any]) -> dict[str, Any]:
    return {"latest_metrics": dict(reports)}


def recent_norms(norms: Sequence[float]) -> dict[str, Any]:
    return {RECENT_NORMS: list(norms)}


def refusal(
    reason: str, detail: str, version: int, updates: Sequence[str], at: float
) -> dict[str, Any]:
    """The last refused global model (`REFUSED`), for `task status`."""
    return {REFUSED: {"reason": reason, "detail": detail, "version": version,
                      "updates": list(updates), "at": at}}  # fmt: skip


def opened(token: str, at: float) -> dict[str, Any]:
    """Async: the open task keeps its completion token."""
    return {"token": token, "started_at": at}


def finished(reason: str, version: int, sha: str, at: float) -> dict[str, Any]:
    """The finish: the final version is the head at this write."""
    return {FINISHED: reason, "final_version": version, "final_sha256": sha, "finished_at": at}


def next_attempt(attempt: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {ATTEMPT: attempt, "status": "RESUMING", "attempts": [dict(a) for a in history]}


def attempt_entry(attempt: int, at: float) -> dict[str, Any]:
    return {"attempt": attempt, "started_at": at}


def ended_entry(entry: Mapping[str, Any], ended: str, failure: Mapping[str, Any]) -> dict[str, Any]:
    """An attempt's entry once it ended, with what the state machine left of its failure."""
    return {**entry, "ended": ended, **failure}


def stopped(cause: str) -> dict[str, Any]:
    """`task stop` of an execution that no longer runs."""
    return {"status": "STOPPED", "cause": cause}


# Every attribute of a TASK item (the table's keys aside), for the literal scan of
# `tests/unit/test_item_literals.py`.
ATTRIBUTES = (
    "config", "spec", STATUS, HEAD_VERSION, "head_sha256", "head_size", "initial_sha256",
    ABSORBED, BUFFERED, "buffer_weight", "buffer_sha256", "dp_buffer_clients",
    "dp_buffer_max_weight", "token", FINISHED, "final_version", "final_sha256", "finished_at",
    "started_at", "created_at", "latest_metrics", WAITING, ATTEMPT, "attempts", "incarnation",
    "optimizer_sha256", "dp_releases", "dp_release_limit", "dp_flushed_clients", RECENT_NORMS,
    REFUSED, "execution_arn", *FAILURE,
)  # fmt: skip
