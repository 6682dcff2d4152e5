"""The report's figures, drawn with `Figure` + `FigureCanvasAgg`, not pyplot: no global
backend or figure registry is touched, so the report can be written from any thread or
process. Every label drawn has its `$` escaped so a hostile client id cannot start
mathtext. A plot that cannot be drawn is omitted with a note; it never fails the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedasync.ops.report_data import contributions, curve, round_durations, staleness

DPI = 110
ACCEPTED, REJECTED, LINE = "#2a9d8f", "#e76f51", "#264653"
LABEL_CHARS = 24

log = structlog.get_logger()


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file stem, caption, and the figure or why there is none."""

    name: str
    caption: str
    figure: Figure | None
    note: str = ""


def _label(text: str) -> str:
    short = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
    return short.replace("$", r"\$")


def _axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (7.0, 4.0)) -> Axes:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)
    return ax


def _bars_legend(ax: Axes, *, counts: bool) -> None:
    """Bar charts: no gridlines between bars, the legend above the plot, never over a bar."""
    ax.grid(axis="x", visible=False)
    if counts:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(top=ax.get_ylim()[1] * 1.12)  # headroom for the bar labels
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)


def _figure(ax: Axes) -> Figure:
    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    return fig


def accuracy_plot(points: list[tuple[float, float]], xlabel: str, title: str) -> Figure:
    ax = _axes(title, xlabel, "held-out accuracy")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.plot(xs, ys, color=LINE, marker="o", markersize=4, linewidth=1.8,
            label=f"global model (final {ys[-1]:.3f})")  # fmt: skip
    best = max(range(len(ys)), key=ys.__getitem__)
    ax.scatter([xs[best]], [ys[best]], s=80, color=ACCEPTED, zorder=3, label=f"best {ys[best]:.3f}")
    ax.set_ylim(min(0.0, *ys), 1.02)
    if "version" in xlabel:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", frameon=False)
    return _figure(ax)


def contributions_plot(counts: dict[str, tuple[int, int]]) -> Figure:
    names = list(counts)
    width = min(16.0, max(7.0, 0.45 * len(names)))
    ax = _axes("Updates per client", "client", "updates", size=(width, 4.2))
    accepted = [counts[n][0] for n in names]
    rejected = [counts[n][1] for n in names]
    ticks = range(len(names))
    ax.bar(ticks, accepted, width=0.6, color=ACCEPTED, label="accepted")
    top = ax.bar(ticks, rejected, width=0.6, bottom=accepted, color=REJECTED, label="rejected")
    ax.bar_label(top, labels=[str(a + r) for a, r in zip(accepted, rejected, strict=True)],
                 padding=2, fontsize=9)  # fmt: skip
    tilt = len(names) > 6
    ax.set_xticks(list(ticks), [_label(n) for n in names], rotation=40 if tilt else 0,
                  ha="right" if tilt else "center", rotation_mode="anchor")  # fmt: skip
    _bars_legend(ax, counts=True)
    return _figure(ax)


def staleness_plot(values: list[int]) -> Figure:
    ax = _axes("Staleness of accepted updates", "staleness (versions behind the head)", "updates")
    counts = Counter(values)
    xs = list(range(min(counts), max(counts) + 1))
    ax.bar(xs, [counts[x] for x in xs], color=LINE, width=0.7, label="accepted updates")
    mean = sum(values) / len(values)
    ax.axvline(mean, color=REJECTED, linestyle="--", label=f"mean {mean:.2f}")
    ax.set_xticks(xs if len(xs) <= 25 else xs[:: len(xs) // 20 + 1])
    _bars_legend(ax, counts=True)
    return _figure(ax)


def rounds_plot(spans: list[tuple[int, float]]) -> Figure:
    ax = _axes("Round durations", "round", "seconds")
    rounds, seconds = [r for r, _ in spans], [s for _, s in spans]
    ax.bar(rounds, seconds, color=LINE, width=0.7, label="round")
    mean = sum(seconds) / len(seconds)
    ax.axhline(mean, color=REJECTED, linestyle="--", label=f"mean {mean:.2f} s")
    ax.set_xticks(rounds if len(rounds) <= 25 else rounds[:: len(rounds) // 20 + 1])
    _bars_legend(ax, counts=False)
    return _figure(ax)


def _maybe(name: str, caption: str, ok: bool, draw: Callable[[], Figure], note: str) -> Plot:
    if not ok:
        return Plot(name, caption, None, note)
    try:
        return Plot(name, caption, draw())
    except Exception as exc:  # a report is a by-product: one bad plot must not end the run
        log.warning("report.plot_failed", plot=name, error=f"{type(exc).__name__}: {exc}")
        return Plot(name, caption, None, "it could not be drawn (see the log)")


def build_plots(summary: Mapping[str, Any], ledger: list[Any]) -> list[Plot]:
    by_time, by_version = curve(summary, "seconds"), curve(summary, "version")
    counts, stale = contributions(ledger), staleness(summary, ledger)
    spans = round_durations(ledger)
    mode = summary.get("mode")
    return [
        _maybe("accuracy_time", "Accuracy against wall-clock time", bool(by_time),
               lambda: accuracy_plot(by_time, "seconds since start", "Accuracy over time"),
               "no accuracy curve was recorded"),
        _maybe("accuracy_version", "Accuracy against global version", bool(by_version),
               lambda: accuracy_plot(by_version, "global version", "Accuracy per version"),
               "no accuracy curve was recorded"),
        _maybe("contributions", "Accepted and rejected updates per client", bool(counts),
               lambda: contributions_plot(counts), "the ledger has no update events"),
        _maybe("staleness", "Staleness histogram (async)", mode != "sync" and bool(stale),
               lambda: staleness_plot(stale),
               "sync rounds have no staleness" if mode == "sync" else "no staleness recorded"),
        _maybe("rounds", "Round durations (sync)", mode == "sync" and bool(spans),
               lambda: rounds_plot(spans),
               "async tasks have no rounds" if mode != "sync" else "no round timings recorded"),
    ]  # fmt: skip
