"""Shared output for the benches: a table on stdout and `--json PATH` figures."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def emit(figures: list[Figure], json_path: str | None) -> None:
    width = max(len(f.name) for f in figures)
    print(
        f"{'figure':<{width}}  {'value':>12}  {'unit':<8}  {'baseline':>12}  {'ratio':>7}  target"
    )
    for f in figures:
        base = f"{f.baseline:12.4g}" if f.baseline is not None else " " * 12
        ratio = f"{f.ratio:7.3f}" if f.ratio is not None else " " * 7
        print(f"{f.name:<{width}}  {f.value:12.4g}  {f.unit:<8}  {base}  {ratio}  {f.target or ''}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps([asdict(f) for f in figures], indent=2))
