"""`report.html`: one demo run as a static page, with its plots as PNGs beside it.

Reads the run's summary (`fedasync.ops.demo`) and its ledger (one dict per line of
`events.jsonl`) and draws what a person wants to see at a glance: accuracy against time
and against version, what each client contributed, how stale async updates were and how
long sync rounds took. Missing data omits a plot with a note; it never fails the run.

Figures are drawn with `Figure` + `FigureCanvasAgg`, not pyplot: no global backend or
figure registry is touched, so the report can be written from any thread or process.
Client ids, reasons and details come from untrusted records: every piece of text that
reaches the HTML goes through `html.escape`, and every label drawn by matplotlib has its
`$` escaped so a hostile id cannot start mathtext.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedasync.ops.report_evals import evaluation_html, evaluation_plot, silo_evaluation

DPI = 110
ACCEPTED, REJECTED, LINE = "#2a9d8f", "#e76f51", "#264653"
LABEL_CHARS = 24
MAX_REJECTED_ROWS = 200

log = structlog.get_logger()


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file stem, caption, and the figure or why there is none."""

    name: str
    caption: str
    figure: Figure | None
    note: str = ""


# --- the data, read defensively --------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None  # NaN is missing, not a point


def _events(ledger: Iterable[Any], kind: str) -> list[Mapping[str, Any]]:
    return [e for e in ledger if isinstance(e, Mapping) and e.get("kind") == kind]


def _curve(summary: Mapping[str, Any], x_key: str) -> list[tuple[float, float]]:
    points = []
    for point in summary.get("accuracy_curve") or []:
        if not isinstance(point, Mapping):
            continue
        x, y = _number(point.get(x_key)), _number(point.get("accuracy"))
        if x is not None and y is not None:
            points.append((x, y))
    return sorted(points)


def contributions(ledger: Iterable[Any]) -> dict[str, tuple[int, int]]:
    """Per client: (accepted, rejected) updates, from the ledger's update events."""
    counts: dict[str, Counter[str]] = {}
    for event in _events(ledger, "update"):
        client = str(event.get("client_id") or "(unknown)")
        counts.setdefault(client, Counter())[str(event.get("verdict"))] += 1
    ordered = sorted(counts, key=_natural)
    return {c: (counts[c]["accepted"], counts[c]["rejected"]) for c in ordered}


def _natural(text: str) -> list[tuple[int, int | str]]:
    """'silo-2' before 'silo-10'."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t]


def staleness(summary: Mapping[str, Any], ledger: Iterable[Any]) -> list[int]:
    """Staleness of accepted updates: the ledger's, else the summary's list."""
    from_ledger = [
        int(s)
        for e in _events(ledger, "update")
        if e.get("verdict") == "accepted" and (s := _number(e.get("staleness"))) is not None
    ]
    if from_ledger:
        return from_ledger
    return [int(s) for s in summary.get("staleness") or [] if _number(s) is not None]


def round_durations(ledger: Iterable[Any]) -> list[tuple[int, float]]:
    """(round, seconds): closed_at − opened_at of round events, else the gaps between
    successive versions' commit times (round r produces version r + 1)."""
    events = list(ledger)
    spans = []
    for event in _events(events, "round"):
        opened, closed = _number(event.get("opened_at")), _number(event.get("closed_at"))
        rid = _number(event.get("round_id"))
        if rid is not None and opened is not None and closed is not None and closed >= opened:
            spans.append((int(rid), closed - opened))
    if spans:
        return sorted(spans)
    commits = {}
    for event in _events(events, "version"):
        version, at = _number(event.get("version")), _number(event.get("committed_at"))
        if version is not None and at is not None:
            commits[int(version)] = at
    return [
        (v - 1, commits[v] - commits[v - 1])
        for v in sorted(commits)
        if v - 1 in commits and commits[v] >= commits[v - 1]
    ]


# --- the figures -----------------------------------------------------------------------


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
    by_time, by_version = _curve(summary, "seconds"), _curve(summary, "version")
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


# --- the page ----------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2b33;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.3rem .8rem;border:1px solid #dde;text-align:left;vertical-align:top}
th{background:#f3f5f7}code{font-size:13px;word-break:break-all}
figure{margin:1.5rem 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#556;font-size:14px}
.note{color:#778;font-style:italic}.ok{color:#2a9d8f;font-weight:bold}.bad{color:#c0392b;font-weight:bold}
"""


def _e(value: Any) -> str:
    return html.escape("—" if value is None else str(value))


def _status(execution: Any) -> str:
    if not isinstance(execution, Mapping):
        return _e(execution)
    status = str(execution.get("status"))
    cause = execution.get("cause")
    css = "ok" if status == "SUCCEEDED" else "bad"
    return f'<span class="{css}">{_e(status)}</span>' + (f" — {_e(cause)}" if cause else "")


def _header(summary: Mapping[str, Any]) -> str:
    rejected = summary.get("rejected_updates") or []
    accuracy = _number(summary.get("final_accuracy"))
    replay = summary.get("replay")
    rows = [
        ("task", _e(summary.get("task_name"))),
        ("mode", _e(summary.get("mode"))),
        ("strategy", _e(summary.get("strategy"))),
        ("clients", _e(summary.get("clients"))),
        ("versions", _e(summary.get("versions"))),
        ("final accuracy", _e(None if accuracy is None else f"{accuracy:.4f}")),
        ("wall seconds", _e(summary.get("wall_seconds"))),
        ("accepted updates", _e(summary.get("accepted_updates"))),
        ("rejected updates", _e(len(rejected) if isinstance(rejected, list) else rejected)),
        ("global model SHA-256", f"<code>{_e(summary.get('global_model_sha256'))}</code>"),
        ("execution", _status(summary.get("execution"))),
    ]
    if isinstance(replay, Mapping):
        ok = bool(replay.get("ok"))
        rows.append(("replay check", f'<span class="{"ok" if ok else "bad"}">'
                     f'{"identical" if ok else "differs"}</span>'))  # fmt: skip
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _rejections(summary: Mapping[str, Any]) -> str:
    rejected = [r for r in summary.get("rejected_updates") or [] if isinstance(r, Mapping)]
    if not rejected:
        return '<p class="note">No update was rejected.</p>'
    reasons = Counter(str(r.get("reason")) for r in rejected)
    by_reason = "".join(f"<tr><td>{_e(k)}</td><td>{n}</td></tr>" for k, n in reasons.most_common())
    shown = rejected[:MAX_REJECTED_ROWS]
    rows = "".join(
        f"<tr><td>{_e(r.get('client_id'))}</td><td><code>{_e(r.get('sk'))}</code></td>"
        f"<td>{_e(r.get('reason'))}</td><td>{_e(r.get('detail'))}</td></tr>"
        for r in shown
    )
    more = len(rejected) - len(shown)
    tail = f'<p class="note">… and {more} more in events.jsonl.</p>' if more > 0 else ""
    return (
        f"<table><tr><th>reason</th><th>updates</th></tr>{by_reason}</table>"
        f"<table><tr><th>client</th><th>update</th><th>reason</th><th>detail</th></tr>"
        f"{rows}</table>{tail}"
    )


def _figure_html(plot: Plot) -> str:
    if plot.figure is None:
        return f'<h3>{_e(plot.caption)}</h3><p class="note">Omitted: {_e(plot.note)}.</p>'
    src = html.escape(f"plots/{plot.name}.png", quote=True)
    return (
        f'<figure><img src="{src}" alt="{_e(plot.caption)}">'
        f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
    )


def render_html(summary: Mapping[str, Any], plots: list[Plot], ledger: Iterable[Any] = ()) -> str:
    title = f"fedasync report: {summary.get('task_name')}"
    rows = silo_evaluation(ledger)
    evals = evaluation_html(rows, summary.get("mode"))
    if rows:  # drawn by write_report beside the others; no "omitted" note without data
        evals += _figure_html(Plot(EVAL_PLOT, "Evaluation at the silos", Figure()))
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{_header(summary)}"
        f"<h2>Rejected updates</h2>{_rejections(summary)}"
        f"<h2>Evaluation at the silos</h2>{evals}"
        f"<h2>Plots</h2>{''.join(_figure_html(p) for p in plots)}"
        f"<h2>Raw data</h2><p><code>summary.json</code> and <code>events.jsonl</code> in "
        f"this folder; client contributions per summary: "
        f"<code>{_e(json.dumps(summary.get('client_updates') or {}, sort_keys=True))}</code>"
        f"</p></body></html>\n"
    )


EVAL_PLOT = "silo_evaluation"


def _write_evaluation_plot(png: Path, summary: Mapping[str, Any], ledger: list[Any]) -> None:
    rows = silo_evaluation(ledger)
    png.unlink(missing_ok=True)
    if not rows:
        return
    try:
        evaluation_plot(rows, summary.get("mode")).savefig(png, dpi=DPI, facecolor="white")
    except Exception as exc:  # a by-product, as every plot: never the end of a run
        log.warning("report.plot_failed", plot=EVAL_PLOT, error=f"{type(exc).__name__}: {exc}")


def write_report(out_dir: Path, summary: dict[str, Any], ledger: list[dict[str, Any]]) -> Path:
    """Write `out_dir/report.html` and its PNGs under `out_dir/plots/`; return the page."""
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = build_plots(summary, ledger)
    for plot in plots:
        png = plots_dir / f"{plot.name}.png"
        if plot.figure is None:
            png.unlink(missing_ok=True)  # a plot from an earlier run in this folder is stale
        else:
            plot.figure.savefig(png, dpi=DPI, facecolor="white")
    _write_evaluation_plot(plots_dir / f"{EVAL_PLOT}.png", summary, ledger)
    page = out_dir / "report.html"
    page.write_text(render_html(summary, plots, ledger), encoding="utf-8")
    return page
