"""No attribute name of a server item (TASK, ROUND, verdict, ledger entry) is written as a
string literal in fedasync/server or fedasync/ops: they read and write items through the
models and builders of `fedasync/core/items/` (issue 20, item 3).

An AST scan: a string constant that is one of those names, used as a subscript key
(`item["verdict"]`) or as the key of a `.get()` (`item.get("closed")`), is a finding,
unless the allow-list below says why that file reads a dict that is not such an item.
A second scan reads every string constant (docstrings aside) as a DynamoDB expression: an
attribute it names (`#verdict`, `attribute_not_exists(closed)`, `head_version = :v`) is a
finding too; conditions are built by `fedasync/core/items/expressions.py` from the codec's
names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fedasync.core.items import ledger, round, task, verdict
from fedasync.core.messages import UpdateRecord

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("fedasync/server", "fedasync/ops")

# The table's keys are the storage layer's (`fedasync.resources`), and the inbox record's
# fields are the silo's, read through `UpdateRecord` / `verdicts.wire_fields` (the brief:
# inbox items keep going through them); `kind` is also the ledger's, so it stays scanned.
NOT_ITEM_NAMES = {"task_name", "sk"} | (set(UpdateRecord.model_fields) - {"kind"})
ITEM_NAMES = frozenset(
    {
        *task.ATTRIBUTES,
        *round.ATTRIBUTES,
        *round.RESULT_ATTRIBUTES,
        *verdict.VERDICT_ATTRIBUTES,
        *ledger.ENTRY_KEYS,
    }
    - NOT_ITEM_NAMES
)

# Files that read a dict which is not one of these items under a name they share.
SECAGG = (
    "owned by the helper `secaggperf` (issue 17), which changes these files in parallel: "
    "their ROUND attributes (the SecAgg phases' and `closed`/`result`) move to the codec "
    "when that work is merged"
)
ALLOWED: dict[tuple[str, str], str] = {
    ("fedasync/ops/taskstop.py", "status"): "a Step Functions execution description",
    ("fedasync/ops/report.py", "status"): "a Step Functions execution description",
    ("fedasync/ops/report.py", "reason"): "summary.json's rejected_updates rows",
    ("fedasync/ops/report.py", "detail"): "summary.json's rejected_updates rows",
    ("fedasync/ops/report.py", "cause"): "a Step Functions execution description",
    ("fedasync/ops/report_plots.py", "mode"): "summary.json",
    ("fedasync/ops/report_data.py", "staleness"): "summary.json's staleness list",
    ("fedasync/ops/report_evals.py", "silos"): "an evaluation entry's per-metric figures",
    ("fedasync/ops/taskstatus.py", "status"): "a heartbeat (inbox: the silo's HeartbeatRecord)",
    ("fedasync/ops/taskstatus.py", "version"): "a heartbeat (inbox: the silo's HeartbeatRecord)",
    ("fedasync/ops/live.py", "status"): "a heartbeat (inbox: the silo's HeartbeatRecord)",
    ("fedasync/ops/live.py", "mode"): "the TaskConfig's JSON, read tolerantly while it starts",
    ("fedasync/ops/live.py", "clients"): "the TaskConfig's JSON, read tolerantly while it starts",
    ("fedasync/ops/taskctl.py", "attempt"): "`resume_task`'s answer, not the TASK item",
    ("fedasync/ops/taskstatus.py", "absorbed"): "the status answer being built",
    ("fedasync/ops/demo.py", "version"): "an accuracy-curve point",
    ("fedasync/ops/report_privacy.py", "version"): "a row of the epsilon curve",
}


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of each string constant used as a subscript key or a `.get()` key."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript):
            key = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
        ):
            key = node.args[0]
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append((key.lineno, key.value))
    return found


# An attribute in an expression: a `#name` placeholder, a function's bare argument, or the
# bare left side of a comparison with a `:value` (DynamoDB takes names without `#` too).
_EXPRESSION_NAMES = re.compile(
    r"#(?P<placeholder>[A-Za-z_]\w*)"
    r"|\b(?:attribute_exists|attribute_not_exists|attribute_type|begins_with|contains|size)"
    r"\(\s*(?P<argument>[A-Za-z_]\w*)"
    r"|\b(?P<compared>[A-Za-z_]\w*)\s*(?:=|<>|<=?|>=?|\s+IN)\s*\(?\s*:\w"
)


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants (module, class, function): prose, not code."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _expression_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of each attribute a string constant names as an expression would."""
    skip = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for m in _EXPRESSION_NAMES.finditer(node.value):
                name = m.group("placeholder") or m.group("argument") or m.group("compared")
                found.append((node.lineno, name))
    return found


def _findings() -> list[str]:
    out = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.name.startswith("secagg_"):
                continue  # SECAGG
            tree = ast.parse(path.read_text(), rel)
            for line, name in _literals(tree):
                if name in ITEM_NAMES and (rel, name) not in ALLOWED:
                    out.append(f"{rel}:{line}: {name!r}")
            for line, name in _expression_names(tree):
                if name in ITEM_NAMES:
                    out.append(f"{rel}:{line}: {name!r} in an expression")
    return out


def test_no_item_attribute_literal_outside_the_codec() -> None:
    # GIVEN the attribute names of the TASK, ROUND, verdict and ledger entry models
    # WHEN fedasync/server and fedasync/ops are scanned for them as subscript or .get() keys
    # THEN none is found outside the allow-list (each entry says what else the dict is),
    # and no string constant names one as a DynamoDB expression does
    assert _findings() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('item["verdict"]', [(1, "verdict")]),
        ('x = item.get("closed", False)', [(1, "closed")]),
        ("item[KEY]", []),
        ('d.update(verdict="accepted")', []),
    ],
)
def test_the_scan_finds_subscript_and_get_keys(
    source: str, expected: list[tuple[int, str]]
) -> None:
    # GIVEN a line of code  WHEN it is scanned  THEN only literal subscript / .get() keys count
    assert _literals(ast.parse(source)) == expected


def test_allow_list_entries_are_still_needed() -> None:
    # GIVEN the allow-list  WHEN each entry's file is scanned
    # THEN each (file, name) still occurs there: a stale entry would hide a new finding
    for rel, name in ALLOWED:
        names = {n for _, n in _literals(ast.parse((ROOT / rel).read_text(), rel))}
        assert name in names, f"{rel}: {name!r} no longer read there; drop it from ALLOWED"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('op(condition="attribute_not_exists(#verdict)")', [(1, "verdict")]),
        ('c = "#head_version = :expected AND attribute_not_exists(#finished)"',
         [(1, "head_version"), (1, "finished")]),
        ('c = "attribute_exists(closed)"', [(1, "closed")]),
        ('c = "status IN (:starting, :running)"', [(1, "status")]),
        ('c += " AND #buffered = :buffered"', [(1, "buffered")]),
        ('c = f"#{name} = :{value}"', []),
        ('log.info("round.closed", verdict="accepted")', []),
        ('COLOURS = "#2a9d8f"', []),
        ('def f():\n    """Holds `attribute_not_exists(#finished)`."""', []),
    ],
)  # fmt: skip
def test_the_scan_finds_attribute_names_in_expression_strings(
    source: str, expected: list[tuple[int, str]]
) -> None:
    # GIVEN a line of code  WHEN its string constants are read as DynamoDB expressions
    # THEN each attribute they name is found: `#name`, a function's argument, a compared name
    # (docstrings, f-string placeholders and colours are not expressions)
    assert _expression_names(ast.parse(source)) == expected
