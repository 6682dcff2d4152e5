"""Evaluation at the silos, aggregated (pure): the example-weighted mean of each `eval_*`
metric per global version.

A silo with held-out data scores the global model it *received* before it trains
(`client.worker.train`, `--eval-fraction`) and reports `eval_loss`, `eval_accuracy`, ...
in its update record's `metrics`. So a record's eval figures are about its base version:
in a sync task about round r's model (round r trains from version r), in an async task
about the version named in `base_version`. Per version and metric the server keeps

    mean = sum(num_examples_i * value_i) / sum(num_examples_i)

over the *accepted* updates that report the metric (a rejected record's figures are the
word of a sender the server refused), one report per silo and version: an async silo may
train twice on one version (FedBuff's go-ahead before the version moves), and scoring the
same model twice must not give it twice the say; its first report in key order counts. The weight is the record's `num_examples`, the only
example count a record carries, bounded by `max_num_examples`. Non-finite values, values
that are not numbers and records claiming no examples do not count. The stop rule of an
async task (`target_metric`) uses the robust weighted median of `fedasync.core.target`
instead: a mean is what a person reads, not what one hostile silo may trigger a stop with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedasync.core.items.verdict import Verdict

EVAL_PREFIX = "eval_"


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class _Sums:
    weighted: float = 0.0
    examples: int = 0
    silos: set[str] = field(default_factory=set)


def eval_means(updates: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Update items (table items or ledger update events) -> one entry per base version
    that has any eval report, oldest first:
    `{"version": v, "metrics": {name: {"mean", "num_examples", "silos"}}}`."""
    sums: dict[int, dict[str, _Sums]] = {}
    # key order, so that which of a silo's reports counts never depends on input order
    for item in sorted(updates, key=lambda i: str(i.get("sk", ""))):
        if not Verdict.from_item(item).accepted:
            continue
        nested = item.get("record")  # a ledger event carries the record as received
        record = nested if isinstance(nested, Mapping) else item
        version, examples = _count(record.get("base_version")), _count(record.get("num_examples"))
        metrics = record.get("metrics")
        if version is None or examples is None or examples <= 0 or not isinstance(metrics, Mapping):
            continue
        for name, raw in metrics.items():
            value = _score(raw)
            if not str(name).startswith(EVAL_PREFIX) or value is None:
                continue
            acc = sums.setdefault(version, {}).setdefault(str(name), _Sums())
            client = str(record.get("client_id"))
            if client in acc.silos:
                continue  # one report per silo and version (async: one per go-ahead on it)
            acc.weighted += examples * value
            acc.examples += examples
            acc.silos.add(client)
    return [
        {
            "version": version,
            "metrics": {
                name: {
                    "mean": acc.weighted / acc.examples,
                    "num_examples": acc.examples,
                    "silos": len(acc.silos),
                }
                for name, acc in sorted(by_name.items())
            },
        }
        for version, by_name in sorted(sums.items())
    ]


def describe_means(entry: Mapping[str, Any], mode: str) -> str:
    """One line for `task status`: 'round 2: eval_accuracy 0.9125, eval_loss 0.31 (3 silos)'."""
    where = f"round {entry['version']}" if mode == "sync" else f"version {entry['version']}"
    metrics = entry["metrics"]
    silos = max((m["silos"] for m in metrics.values()), default=0)
    shown = ", ".join(f"{name} {m['mean']:.4g}" for name, m in metrics.items())
    return f"{where}: {shown} ({silos} silo{'s' if silos != 1 else ''})"
