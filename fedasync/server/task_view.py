"""The TASK item, read into typed values (and the attributes the server writes on it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedasync.core import keys
from fedasync.core.asyncagg import AsyncState
from fedasync.core.codec import ModelSpec, TensorSpec
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError, TaskNotFoundError
from fedasync.core.messages import GlobalModelNotice
from fedasync.core.target import Report


def spec_to_json(spec: ModelSpec) -> str:
    return json.dumps([[t.name, list(t.shape), t.dtype] for t in spec])


def spec_from_json(text: str) -> ModelSpec:
    try:
        return tuple(
            TensorSpec(str(n), tuple(int(d) for d in s), str(dt)) for n, s, dt in json.loads(text)
        )
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"stored model spec is unreadable: {exc}") from exc


WAITING = "waiting"  # async: clients owed a go-ahead after a rejection (a string set)


@dataclass(frozen=True)
class TaskView:
    cfg: TaskConfig
    spec: ModelSpec
    status: str
    head_version: int
    head_sha256: str
    state: AsyncState
    buffer_sha256: str | None
    token: str | None
    finished: str | None
    started_at: float | None
    latest_metrics: dict[str, Report]  # async: each silo's latest target-metric report
    head_size: int
    # async: rostered clients whose last update was rejected and that wait for a go-ahead
    waiting: frozenset[str] = frozenset()
    # the task's execution attempt (1, then one more per `fedasync task resume`)
    attempt: int = 1
    incarnation: str | None = None  # the TASK item's: see GlobalModelNotice.incarnation
    # the server optimizer's state after the head version's step (None: no step yet)
    optimizer_sha256: str | None = None
    # central DP: the releases made, and the most the budget allows (None: no central DP)
    dp_releases: int = 0
    dp_release_limit: int | None = None
    # central DP with FedBuff: the silos of the buffer(s) the last invocation flushed
    dp_flushed: frozenset[str] = frozenset()
    # async, with an outlier filter: the delta norms of the last accepted updates
    recent_norms: tuple[float, ...] = ()

    @classmethod
    def from_item(cls, task_name: str, item: dict[str, Any] | None) -> TaskView:
        if item is None:
            raise TaskNotFoundError(f"task {task_name!r} does not exist")
        cfg = TaskConfig.model_validate_json(item["config"])
        return cls(
            cfg=cfg,
            spec=spec_from_json(item["spec"]),
            status=str(item.get("status", "STARTING")),
            head_version=int(item.get("head_version", 0)),
            head_sha256=str(item["head_sha256"]),
            state=AsyncState(
                version=int(item.get("head_version", 0)),
                absorbed=int(item.get("absorbed", 0)),
                buffered=int(item.get("buffered", 0)),
                buffer_weight=float(item.get("buffer_weight", 0.0)),
                buffer_clients=tuple(str(c) for c in item.get("dp_buffer_clients") or ()),
                buffer_max_weight=float(item.get("dp_buffer_max_weight", 0.0)),
            ),
            buffer_sha256=item.get("buffer_sha256") or None,
            token=item.get("token") or None,
            finished=item.get("finished") or None,
            started_at=float(item["started_at"]) if item.get("started_at") is not None else None,
            latest_metrics={
                str(k): r
                for k, v in (item.get("latest_metrics") or {}).items()
                if (r := Report.from_item(v)) is not None
            },
            head_size=int(item.get("head_size", 0)),
            waiting=frozenset(str(c) for c in item.get(WAITING) or ()),
            attempt=int(item.get("attempt", 1)),
            incarnation=str(item["incarnation"]) if item.get("incarnation") else None,
            optimizer_sha256=item.get("optimizer_sha256") or None,
            dp_releases=int(item.get("dp_releases", 0)),
            dp_release_limit=(
                int(item["dp_release_limit"]) if item.get("dp_release_limit") is not None else None
            ),
            recent_norms=tuple(float(x) for x in item.get("recent_norms") or ()),
            dp_flushed=frozenset(str(c) for c in item.get("dp_flushed_clients") or ()),
        )

    @property
    def task_name(self) -> str:
        return self.cfg.task_name

    def notice(
        self, version: int, *, final: bool = False, seq: int | None = None
    ) -> GlobalModelNotice:
        """The notice for `version` (the head; or the final model once the task ended).

        `seq` (async): the updates absorbed so far; see `GlobalModelNotice.seq`."""
        name = self.cfg.task_name
        return GlobalModelNotice(
            task_name=name,
            mode=self.cfg.mode,
            version=version,
            round_id=version if self.cfg.mode == "sync" and not final else None,
            s3_key=keys.final_key(name) if final else keys.global_key(name, version),
            sha256=self.head_sha256,
            size_bytes=self.head_size,
            final=final,
            seq=seq,
            incarnation=self.incarnation,
            proximal_mu=self.cfg.proximal_mu,
            update_encoding=self.cfg.update_encoding,
            privacy=(
                self.cfg.privacy
                if self.cfg.privacy is not None and self.cfg.privacy.mode == "local"
                else None
            ),
        )
