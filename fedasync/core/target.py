"""When an async task has reached its `target_metric` (pure): a robust aggregate of the
silos' latest reports, with a quorum of reporters.

Each silo's latest accepted update that carries the metric is its report: the value and
its `num_examples`. The task stops once at least `TaskConfig.target_reporters` distinct
silos have reported and their example-weighted median reaches the threshold. The median
is taken on the conservative side: it is the best value that silos holding *more than
half* of the weight report or beat, so one silo (or a minority) reporting a huge value
never stops a task alone. A silo's weight is its `num_examples` clipped at the median
`num_examples` of the reporters, so claiming a huge example count buys no more say than
a typical silo has. Non-finite values and silos claiming no examples do not report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedasync.core.config import TaskConfig


@dataclass(frozen=True)
class Report:
    """One silo's latest value of the target metric and the examples behind it."""

    value: float
    num_examples: int

    def item(self) -> dict[str, Any]:
        """As stored on the TASK item (`latest_metrics`)."""
        return {"value": self.value, "num_examples": self.num_examples}

    @classmethod
    def from_item(cls, stored: Any) -> Report | None:
        """A stored report; a bare number (a task started by an older build) weighs 1."""
        if isinstance(stored, Mapping):
            value, examples = stored.get("value"), stored.get("num_examples")
        else:
            value, examples = stored, 1
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(examples, bool) or not isinstance(examples, int):
            return None
        return cls(float(value), examples)


def _counts(report: Report) -> bool:
    return math.isfinite(report.value) and report.num_examples > 0


def weighted_median(reports: Iterable[Report], *, higher_is_better: bool = True) -> float | None:
    """The best value that reporters holding more than half of the weight reach or beat;
    None without a report that counts. Weights are clipped at the median weight."""
    counted = [r for r in reports if _counts(r)]
    if not counted:
        return None
    sizes = sorted(r.num_examples for r in counted)
    cap = sizes[(len(sizes) - 1) // 2]  # the lower median: a typical silo's example count
    ranked = sorted(counted, key=lambda r: r.value, reverse=higher_is_better)
    total = sum(min(r.num_examples, cap) for r in ranked)
    held = 0
    for report in ranked:
        held += min(report.num_examples, cap)
        if 2 * held > total:
            return report.value
    return ranked[-1].value  # unreachable: the last report holds the whole weight


def with_report(
    cfg: TaskConfig,
    latest: Mapping[str, Report],
    client_id: str,
    metrics: Mapping[str, float],
    num_examples: int,
) -> dict[str, Report] | None:
    """The latest reports after an accepted update; None if it reports nothing new."""
    target = cfg.target_metric
    if target is None or target.name not in metrics:
        return None
    return {**latest, client_id: Report(float(metrics[target.name]), num_examples)}


def target_value(cfg: TaskConfig, latest: Mapping[str, Report]) -> float | None:
    """The aggregate the stop rule compares with the threshold, once enough distinct
    silos have reported (`TaskConfig.target_reporters`); None before that."""
    target = cfg.target_metric
    if target is None:
        return None
    counted = [r for c, r in latest.items() if c in cfg.clients and _counts(r)]
    if len(counted) < cfg.target_reporters:
        return None
    return weighted_median(counted, higher_is_better=target.higher_is_better)
