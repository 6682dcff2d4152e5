"""`report.html`: one demo run as a static page, with its plots as PNGs beside it.

Reads the run's summary (`fedasync.ops.demo`) and its ledger (`fedasync.ops.report_data`)
and shows what a person wants to see at a glance: accuracy against time and against
version, what each client contributed, how stale async updates were and how long sync
rounds took (`fedasync.ops.report_plots`), and the silos' evaluation
(`fedasync.ops.report_evals`). Missing data omits a plot with a note; it never fails the
run. Client ids, reasons and details come from untrusted records: every piece of text
that reaches the HTML goes through `html.escape`.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from matplotlib.figure import Figure

from fedasync.ops.report_data import number
from fedasync.ops.report_evals import evaluation_html, evaluation_plot, silo_evaluation
from fedasync.ops.report_plots import DPI, Plot, build_plots
from fedasync.ops.report_privacy import privacy_html

MAX_REJECTED_ROWS = 200

log = structlog.get_logger()

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
    accuracy = number(summary.get("final_accuracy"))
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
    ledger = list(ledger)
    rows = silo_evaluation(ledger)
    evals = evaluation_html(rows, summary.get("mode"))
    if rows:  # drawn by write_report beside the others; no "omitted" note without data
        evals += _figure_html(Plot(EVAL_PLOT, "Evaluation at the silos", Figure()))
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{_header(summary)}"
        f"{privacy_html(ledger)}"
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
