"""Where a silo's round goes, per request type: `bench/scale.py --profile`.

The moto server writes one line per request it served (`fedasync.local.moto_timing`):
operation, signing key, wall and CPU time in the server. Grouped by who signed (a
client, the aggregate or control handler, the Step Functions engine, the stack admin)
and by operation, over the task's run only, and divided by silos x rounds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ENV_TIMING_LOG = "FEDASYNC_MOTO_TIMING"  # fedasync.local.moto_timing's (a base may lack it)


@dataclass
class Row:
    count: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


def principal_class(principal: str) -> str:
    return "client" if principal.startswith("client:") else principal


def read(
    path: Path, keys: dict[str, str], since: float, until: float
) -> dict[tuple[str, str], Row]:
    """Rows by (principal class, operation) of the requests served in [since, until]."""
    rows: dict[tuple[str, str], Row] = defaultdict(Row)
    for text in path.read_text(encoding="utf-8").splitlines():
        line = json.loads(text)
        if not since <= line["at"] <= until:
            continue
        row = rows[(principal_class(keys.get(line["key"], "engine/admin")), line["op"])]
        row.count += 1
        row.cpu_s += line["cpu_s"]
        row.wall_s += line["wall_s"]
    return rows


def table(by_n: dict[int, dict[tuple[str, str], Row]], rounds: int) -> str:
    """Requests and moto CPU ms per silo per round, side by side for each silo count."""
    names = sorted({k for rows in by_n.values() for k in rows})
    head = "who       operation                          " + "".join(
        f"| {n:>4} silos: req  cpu ms " for n in by_n
    )
    out = [head, "-" * len(head)]
    totals = {n: Row() for n in by_n}
    for who, op in names:
        cells = ""
        for n, rows in by_n.items():
            row = rows.get((who, op), Row())
            per = n * rounds
            cells += f"| {row.count / per:16.2f} {1000 * row.cpu_s / per:7.2f} "
            totals[n].count += row.count
            totals[n].cpu_s += row.cpu_s
        out.append(f"{who:<9} {op:<34} {cells}")
    cells = "".join(
        f"| {t.count / (n * rounds):16.2f} {1000 * t.cpu_s / (n * rounds):7.2f} "
        for n, t in totals.items()
    )
    out += ["-" * len(head), f"{'total':<44} {cells}"]
    return "\n".join(out)
