"""`fedasync task status` as a table: the data `fedasync.ops.taskstatus.status` returns,
rendered for a person (`--json` prints the data itself)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from fedasync.core.evals import describe_means

_SHOWN_REJECTIONS = 3  # the table shows the latest few; --json lists them all
_SHOWN_EVALUATIONS = 3  # rounds / versions: the latest few (--json: every one)


def status_table(out: dict[str, Any]) -> Table:
    table = Table(title=f"fedasync task: {out['task_name']}", show_header=False)
    if out["mode"] == "async":
        progress = f"{out['absorbed']} update(s) absorbed, max_versions {out['max_versions']}"
    elif out["round"] is None:
        progress = f"{out['rounds_closed']} of {out['rounds']} rounds closed"
    else:
        progress = f"round {out['round']} open, {out['rounds_closed']} of {out['rounds']} closed"
    clients, updates, execution = out["clients"], out["updates"], out["execution"]
    rows = [
        ("mode", f"{out['mode']} ({out['strategy']})"),
        ("status", out["status"] + (f": {out['cause']}" if out.get("cause") else "")),
        ("version", f"{out['version']}; {progress}"),
        ("finished", _finished(out)),
        ("alive clients", f"{', '.join(clients['alive']) or '-'} of {len(clients['expected'])}"),
        ("accepted updates", str(updates["accepted"])),
        ("rejected updates", _by_reason(updates["rejections"])),
        ("pending updates", str(updates["pending"])),
    ]
    rows += [
        (f"  {r['client_id']} {r['update_id']}", f"{r['reason']}: {r['detail']}")
        for r in updates["rejections"][-_SHOWN_REJECTIONS:]
    ]
    evaluation = out.get("evaluation") or []
    rows += [
        ("silo evaluation" if i == 0 else "", describe_means(entry, out["mode"]))
        for i, entry in enumerate(evaluation[-_SHOWN_EVALUATIONS:])
    ]
    refused = out.get("global_refused")
    if refused:
        rows.append(
            (
                "refused global model",
                f"{refused['reason']} at version {refused['version']} "
                f"({updates.get('discarded', 0)} accepted update(s) discarded): {refused['detail']}",
            )
        )
    privacy = out.get("privacy")
    if privacy:
        rows.append(("privacy", describe_privacy(privacy)))
    rows.append(("execution", f"{execution['status']} (attempt {out['attempt']})"))
    rows += [
        (
            f"  attempt {a['attempt']}",
            f"{a['ended']}" + (f": {a['cause']}" if a.get("cause") else ""),
        )
        for a in out["attempts"]
        if a.get("ended")
    ]
    if execution.get("cause"):
        rows.append(("execution cause", str(execution["cause"])))
    for key, value in rows:
        table.add_row(key, value)
    return table


def describe_privacy(p: dict[str, Any]) -> str:
    """`central: epsilon 8.08 of 10 at delta 1e-05 (rdp), 10 of 14 release(s)`."""
    if p["mode"] == "central":
        limit = p.get("release_limit")
        of = f" of {limit}" if limit is not None else ""
        return (
            f"central: epsilon {p['epsilon']:.4g} of {p['target_epsilon']:g} at delta "
            f"{p['delta']:g} ({p['accountant']}), {p['releases']}{of} release(s)"
        )
    return (
        f"local: epsilon up to {p['epsilon_max']:.4g} of {p['target_epsilon']:g} at delta "
        f"{p['delta']:g} ({p['accountant']}), by silo {p['epsilon_by_silo']}"
    )


def _finished(out: dict[str, Any]) -> str:
    if not out["finished"]:
        return "-"
    return f"{out['finished']} (final version {out['final_version']})"


def _by_reason(rejections: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in rejections:
        counts[str(r["reason"])] = counts.get(str(r["reason"]), 0) + 1
    detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    return f"{len(rejections)} ({detail})" if rejections else "0"
