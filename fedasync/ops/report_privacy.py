"""The report's "Privacy" section: epsilon spent after each release and the target.

Central DP: the releases are read off the ledger (`privacy_report.released_versions`)
and epsilon after each is the task's accountant at its delta, as `task status` computes
it. Local DP: each silo's own epsilon, from its records. Nothing else is shown (no
noise, no norm: the ledger holds none)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from fedasync.core.config import TaskConfig
from fedasync.core.items.ledger import entries
from fedasync.ops import privacy_report


def _e(value: object) -> str:
    return html.escape(str(value))


def _task_config(events: list[Mapping[str, Any]]) -> TaskConfig | None:
    for event in entries(events, "task"):
        if isinstance(event.config, Mapping):
            try:
                return TaskConfig.model_validate(event.config)
            except (ValidationError, ValueError):  # a damaged ledger omits the section
                return None
    return None


def privacy_html(ledger: Iterable[Any]) -> str:
    """The section's HTML ('' for a task without DP, or a ledger without its task)."""
    events = [e for e in ledger if isinstance(e, Mapping)]
    cfg = _task_config(events)
    if cfg is None or cfg.privacy is None:
        return ""
    p = cfg.privacy
    head = (
        f"<p>{_e(p.mode)} DP: clip_norm C = {p.clip_norm:g}, noise_multiplier z = "
        f"{p.noise_multiplier:g}, delta = {p.delta:g}, accountant {_e(p.accountant)}; "
        f"target epsilon <b>{p.target_epsilon:g}</b>.</p>"
    )
    if p.mode == "local":
        spent = privacy_report.local(cfg, (e.record or {} for e in entries(events, "update")))
        rows = "".join(
            f"<tr><td>{_e(c)}</td><td>{eps:.4f}</td></tr>"
            for c, eps in sorted((spent or {}).get("epsilon_by_silo", {}).items())
        )
        return f"<h2>Privacy</h2>{head}<table><tr><th>silo</th><th>epsilon</th></tr>{rows}</table>"
    curve = privacy_report.epsilon_curve(cfg, events)
    if not curve:
        return f'<h2>Privacy</h2>{head}<p class="note">No release was made.</p>'
    rows = "".join(
        f"<tr><td>{c['release']}</td><td>{c['version']}</td><td>{c['epsilon']:.4f}</td>"
        f"<td>{p.target_epsilon:g}</td></tr>"
        for c in curve
    )
    last = curve[-1]
    return (
        f'<h2>Privacy</h2>{head}<p class="privacy-spent">epsilon spent: '
        f"<b>{last['epsilon']:.4f}</b> after {last['release']} release(s), of target "
        f'{p.target_epsilon:g}.</p><table class="epsilon"><tr><th>release</th>'
        f"<th>version</th><th>epsilon after it</th><th>target</th></tr>{rows}</table>"
    )
