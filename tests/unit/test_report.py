"""report.html and its PNGs, from a synthetic summary and ledger: files, escaping, omissions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fedasync.ops.report import write_report
from fedasync.ops.report_data import contributions, round_durations, staleness

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>$x$"
CLIENTS = ("hospital-a", "bank-b", "dc-c", HOSTILE)


def synthetic(mode: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run of 6 versions: every client accepted each version, the hostile one also rejected."""
    versions = 6
    curve = [
        {"version": v, "seconds": 1.5 * v, "accuracy": round(0.1 + 0.8 * (1 - 0.6**v), 4)}
        for v in range(versions + 1)
    ]
    ledger: list[dict[str, Any]] = [
        {"kind": "task", "task_name": "digits", "config": {"mode": mode}, "created_at": 100.0},
        {"kind": "mystery", "whatever": 1},  # unknown kinds are ignored
    ]
    for v in range(versions):
        for i, client in enumerate(CLIENTS[:3]):
            ledger.append(
                {
                    "kind": "update",
                    "sk": f"UPDATE#{v:08d}#{client}",
                    "client_id": client,
                    "verdict": "accepted",
                    "reason": None,
                    "staleness": None if mode == "sync" else (v + i) % 3,
                }
            )
        if mode == "sync":
            ledger.append(
                {
                    "kind": "round",
                    "round_id": v,
                    "members": [],
                    "version": v + 1,
                    "sha256": "ab",
                    "opened_at": 100.0 + 2 * v,
                    "closed_at": 101.0 + 2 * v + 0.1 * v,
                }
            )
        ledger.append({"kind": "version", "version": v + 1, "sha256": "ab", "committed_at": None})
    ledger.append(
        {
            "kind": "update",
            "sk": "UPDATE#x",
            "client_id": HOSTILE,
            "verdict": "rejected",
            "reason": "stale",
        }
    )
    ledger.append({"kind": "final", "version": versions, "sha256": "ab", "reason": "max_versions"})
    summary = {
        "task_name": "digits",
        "mode": mode,
        "strategy": "fedavg" if mode == "sync" else "fedasync",
        "clients": len(CLIENTS),
        "versions": versions,
        "final_accuracy": curve[-1]["accuracy"],
        "accuracy_curve": curve,
        "wall_seconds": 9.75,
        "global_model_sha256": "0a6c" * 16,
        "accepted_updates": 18,
        "rejected_updates": [
            {"client_id": HOSTILE, "sk": "UPDATE#x", "reason": "stale", "detail": "<b>5 > 3</b>"}
        ],
        "staleness": [],
        "execution": {"status": "SUCCEEDED", "cause": None},
        "events_path": "runs/digits/events.jsonl",
        "client_updates": {c: 6 for c in CLIENTS},
    }
    return summary, ledger


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


@pytest.mark.parametrize(
    ("mode", "drawn", "omitted"),
    [
        ("sync", {"accuracy_time", "accuracy_version", "contributions", "rounds"}, {"staleness"}),
        ("async", {"accuracy_time", "accuracy_version", "contributions", "staleness"}, {"rounds"}),
    ],
)
def test_report_draws_the_plots_of_its_mode_and_references_each(tmp_path, mode, drawn, omitted):
    # GIVEN a finished run's summary and ledger
    summary, ledger = synthetic(mode)
    # WHEN the report is written
    page_path = write_report(tmp_path, summary, ledger)
    # THEN report.html exists and references exactly the PNGs drawn, each a real PNG
    assert page_path == tmp_path / "report.html"
    page = page_path.read_text()
    assert sorted(img_sources(page)) == sorted(f"plots/{n}.png" for n in drawn)
    for name in drawn:
        assert_valid_png(tmp_path / "plots" / f"{name}.png")
    for name in omitted:
        assert not (tmp_path / "plots" / f"{name}.png").exists()
    assert page.count("Omitted:") == len(omitted)
    # AND the header carries the key facts
    for fact in ("digits", mode, "0.8627", "9.75", "0a6c" * 16, "SUCCEEDED", "stale"):
        assert fact in page
    assert "<script" not in page and "http" not in page  # static: no JS, no CDN


def test_hostile_text_is_escaped_everywhere(tmp_path):
    # GIVEN a rejected update from a client whose id and detail are HTML
    summary, ledger = synthetic("async")
    summary["task_name"] = "<img src=x onerror=alert(1)>"
    # WHEN the report is written
    page = write_report(tmp_path, summary, ledger).read_text()
    # THEN no markup from the records reaches the page, only its escaped text
    assert "<script>" not in page and "<b>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;5 &gt; 3&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.parametrize(
    "damage",
    [
        lambda s, led: (s | {"accuracy_curve": [], "final_accuracy": None}, led),
        lambda s, led: ({"mode": "async"}, []),
        lambda s, led: ({}, [{"kind": "update"}, {"no": "kind"}, "junk"]),
        lambda s, led: (
            s
            | {
                "accuracy_curve": [{"version": 1, "accuracy": float("nan")}, {"x": 1}],
                "execution": "odd",
                "rejected_updates": ["junk"],
            },
            [e | {"opened_at": None, "closed_at": "soon"} for e in led],
        ),
    ],
    ids=["no-curve", "empty-ledger", "junk-only", "malformed-values"],
)
def test_missing_or_malformed_data_omits_plots_without_crashing(tmp_path, damage):
    # GIVEN a summary or ledger with data missing or malformed
    summary, ledger = damage(*synthetic("sync"))
    # WHEN the report is written
    page = write_report(tmp_path, summary, ledger).read_text()
    # THEN every referenced PNG exists and every other plot is omitted with a note
    sources = img_sources(page)
    for src in sources:
        assert_valid_png(tmp_path / src)
    assert page.count("Omitted:") == 5 - len(sources)
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(sources)


def test_rewriting_a_folder_drops_plots_that_no_longer_apply(tmp_path):
    # GIVEN a folder holding a report with an accuracy curve
    write_report(tmp_path, *synthetic("sync"))
    assert (tmp_path / "plots" / "accuracy_time.png").exists()
    # WHEN a run without a curve writes its report into the same folder
    summary, ledger = synthetic("sync")
    write_report(tmp_path, summary | {"accuracy_curve": []}, ledger)
    # THEN the stale plot is gone rather than shown next to the wrong run
    assert not (tmp_path / "plots" / "accuracy_time.png").exists()


def test_data_read_from_the_ledger_matches_a_hand_count():
    _, ledger = synthetic("sync")
    assert contributions(ledger) == {
        "bank-b": (6, 0),
        "dc-c": (6, 0),
        "hospital-a": (6, 0),
        HOSTILE: (0, 1),
    }
    # round r: opened at 100 + 2r, closed at 101 + 2.1r → 1 + 0.1r seconds
    spans = round_durations(ledger)
    assert [r for r, _ in spans] == list(range(6))
    assert [s for _, s in spans] == pytest.approx([1 + 0.1 * r for r in range(6)])
    # without round timings, the gaps between version commit times stand in
    commits = [{"kind": "version", "version": v, "committed_at": 10.0 + v * v} for v in range(4)]
    assert round_durations(commits) == [(0, 1.0), (1, 3.0), (2, 5.0)]
    assert round_durations([{"kind": "round", "round_id": 0}]) == []
    # async staleness: (v + i) % 3 for v in 0..5, i in 0..2 → six each of 0, 1, 2
    _, async_ledger = synthetic("async")
    assert sorted(staleness({}, async_ledger)) == [0] * 6 + [1] * 6 + [2] * 6
    assert staleness({"staleness": [3, 4]}, []) == [3, 4]


def _rdp_epsilon(releases: int, z: float, delta: float) -> float:
    """dp-accounting's own epsilon for `releases` Gaussian releases (its public API)."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases)
    )
    return float(accountant.get_epsilon(delta))


def test_the_report_shows_epsilon_after_each_fedbuff_flush_and_the_target(tmp_path):
    # GIVEN a central-DP FedBuff run (K = 2, z = 1.2, delta 1e-5, target 9) whose ledger
    # holds 6 accepted updates: every second one flushed the buffer (versions 1, 2, 3)
    from fedasync.core.config import TaskConfig

    cfg = TaskConfig.parse(
        {
            "task_name": "digits",
            "mode": "async",
            "strategy": "fedbuff",
            "clients": ["a", "b", "c"],
            "buffer_size": 2,
            "privacy": {
                "mode": "central",
                "clip_norm": 1.0,
                "noise_multiplier": 1.2,
                "target_epsilon": 9.0,
                "delta": 1e-5,
            },
        }
    )
    summary, _ = synthetic("async")
    ledger: list[dict[str, Any]] = [
        {"kind": "task", "task_name": "digits", "config": cfg.model_dump(mode="json")}
    ]
    for seq in range(1, 7):
        flush = seq % 2 == 0
        ledger.append(
            {
                "kind": "update",
                "sk": f"UPDATE#{seq}",
                "client_id": "abc"[seq % 3],
                "verdict": "accepted",
                "seq": seq,
                "applied_version": seq // 2,
                **({"version_sha256": "ab" * 32} if flush else {}),
            }
        )
    # WHEN the report is written
    page = write_report(tmp_path, summary, ledger).read_text(encoding="utf-8")
    # THEN its Privacy section lists epsilon after releases 1, 2, 3 (dp-accounting's own
    # figures, to the 4 decimals shown) against the target 9
    section = page[page.index("<h2>Privacy</h2>") :]
    rows = re.findall(
        r"<tr><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td></tr>", section
    )
    expected = [(n, n, f"{_rdp_epsilon(n, 1.2, 1e-5):.4f}", "9") for n in (1, 2, 3)]
    assert [(int(r), int(v), e, t) for r, v, e, t in rows] == expected
    assert f"epsilon spent: <b>{_rdp_epsilon(3, 1.2, 1e-5):.4f}</b> after 3 release(s)" in section


def test_a_report_without_dp_or_with_a_damaged_config_has_no_privacy_section(tmp_path):
    # GIVEN the synthetic run, whose task config is partial (no privacy, not a full config)
    summary, ledger = synthetic("sync")
    # WHEN the report is written THEN it has no Privacy section, and it is written at all
    assert "<h2>Privacy</h2>" not in write_report(tmp_path, summary, ledger).read_text()
