"""The report's "Evaluation at the silos" part: the ledger's `evaluation` events (the
example-weighted mean of each eval_* metric per round or version, `fedasync.core.evals`)
as a plot and a table. Metric names come from silos' records: escaped like every label."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedasync.core.items.ledger import entries

MAX_ROWS = 200
MAX_LINES = 8  # metrics drawn; the table has them all


def silo_evaluation(ledger: Iterable[Any]) -> list[tuple[int, dict[str, tuple[float, int]]]]:
    """(version, {metric: (mean, silos)}) per evaluation event, oldest first."""
    out = []
    for event in entries(ledger, "evaluation"):
        version, metrics = event.version, event.metrics
        if isinstance(version, bool) or not isinstance(version, int):
            continue
        if not isinstance(metrics, Mapping):
            continue
        row = {}
        for name, figures in metrics.items():
            mean = figures.get("mean") if isinstance(figures, Mapping) else None
            silos = figures.get("silos") if isinstance(figures, Mapping) else None
            if isinstance(mean, int | float) and not isinstance(mean, bool) and math.isfinite(mean):
                row[str(name)] = (float(mean), silos if isinstance(silos, int) else 0)
        if row:
            out.append((version, row))
    return sorted(out, key=lambda pair: pair[0])


def evaluation_plot(rows: list[tuple[int, dict[str, tuple[float, int]]]], mode: Any) -> Figure:
    fig = Figure(figsize=(7.0, 4.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    where = "round" if mode == "sync" else "global version"
    ax.set_title("Evaluation at the silos", fontsize=12, fontweight="bold", loc="left")
    ax.set_xlabel(f"{where} (the model the silos received)")
    ax.set_ylabel("example-weighted mean")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    names = sorted({name for _, row in rows for name in row})[:MAX_LINES]
    for name in names:
        points = [(v, row[name][0]) for v, row in rows if name in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4,
                linewidth=1.8, label=name.replace("$", r"\$")[:24])  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", frameon=False)
    return fig


def _silos(n: int) -> str:
    return f"{n} silo" if n == 1 else f"{n} silos"


def evaluation_html(rows: list[tuple[int, dict[str, tuple[float, int]]]], mode: Any) -> str:
    if not rows:
        return (
            '<p class="note">No silo reported eval_* metrics (clients hold data out with '
            "<code>--eval-fraction</code>).</p>"
        )
    names = sorted({name for _, row in rows for name in row})
    where = "round" if mode == "sync" else "version"
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{v}</td>"
        + "".join(
            f"<td>{row[n][0]:.4f} ({_silos(row[n][1])})</td>" if n in row else "<td>—</td>"
            for n in names
        )
        + "</tr>"
        for v, row in rows[-MAX_ROWS:]
    )
    return (
        "<p>Each silo scores the global model it received on the data it holds out; per "
        f"{where}, the mean of the accepted updates' reports weighted by their "
        f"<code>num_examples</code>.</p><table><tr><th>{where}</th>{head}</tr>{body}</table>"
    )
