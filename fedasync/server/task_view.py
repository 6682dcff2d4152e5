"""The TASK item as the server decides on it: `fedasync.core.items.task.TaskItem` with its
config, spec and reports parsed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedasync.core import keys
from fedasync.core.asyncagg import AsyncState
from fedasync.core.codec import ModelSpec, TensorSpec
from fedasync.core.config import TaskConfig
from fedasync.core.errors import SchemaError
from fedasync.core.items.task import WAITING, TaskItem
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
        return cls.of(TaskItem.from_item(task_name, item))

    @classmethod
    def of(cls, t: TaskItem) -> TaskView:
        return cls(
            cfg=TaskConfig.model_validate_json(t.config),
            spec=spec_from_json(t.spec),
            status=t.status,
            head_version=t.head_version,
            head_sha256=t.head_sha256,
            state=AsyncState(
                version=t.head_version,
                absorbed=t.absorbed,
                buffered=t.buffered,
                buffer_weight=t.buffer_weight,
                buffer_clients=t.buffer_clients,
                buffer_max_weight=t.buffer_max_weight,
            ),
            buffer_sha256=t.buffer_sha256,
            token=t.token,
            finished=t.finished,
            started_at=t.started_at,
            latest_metrics={
                str(k): r
                for k, v in t.latest_metrics.items()
                if (r := Report.from_item(v)) is not None
            },
            head_size=t.head_size,
            waiting=t.waiting,
            attempt=t.attempt,
            incarnation=t.incarnation,
            optimizer_sha256=t.optimizer_sha256,
            dp_releases=t.dp_releases,
            dp_release_limit=t.dp_release_limit,
            recent_norms=t.recent_norms,
            dp_flushed=t.dp_flushed,
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


__all__ = ["WAITING", "TaskView", "spec_from_json", "spec_to_json"]
