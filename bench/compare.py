"""Two commits side by side in one run: the same bench, interleaved, on each commit's code.

    python bench/compare.py --base COMMIT [--head COMMIT|WORKTREE] [--repeats 3]
                            [--only overhead absorb] [--quick] [--json PATH]
    python bench/compare.py --bench scale --base COMMIT [--silos 10 100 250] [--rounds 3]

A change that must be "no worse than before" (the server redesign: sync round overhead and
async absorb rates) is judged here, not against a figure from another day: the machine is
shared and noisy, so both sides are measured in one run, alternating base, head, base, head,
... so that a slow minute hurts both alike. Each side runs its *own* copy of
`bench/time_to_accuracy.py` on its own code (a detached `git worktree` of the base commit,
`PYTHONPATH` set to the tree), so a bench script that changed with the code is measured as
it was then. The figure is the median over the repeats of each side's own median; `ratio`
is head / base, and `target` says which way is better.

`--bench scale` runs `bench/scale.py` instead (orchestration per silo at 10, 100, 250
silos): the head's copy of the script on both sides, so that one instrument measures
both codes (the script only uses what the base has too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, emit

REPO = Path(__file__).resolve().parents[1]
HIGHER_IS_BETTER = ("absorb_rate",)


def checkout(commit: str, into: Path) -> Path:
    """A detached worktree of `commit` (removed at the end of the run)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(into), commit],
        check=True,
    )
    return into


def run_side(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One run of the bench on the tree's code; its figures by name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        if args.bench == "scale":
            script = Path(tmp) / "bench" / "scale.py"  # the head's, importing the tree's code
            script.parent.mkdir()
            shutil.copy(REPO / "bench" / "scale.py", script)
            shutil.copy(REPO / "bench" / "scale_profile.py", script.parent / "scale_profile.py")
            shutil.copy(tree / "bench" / "_report.py", script.parent / "_report.py")
            cmd = [sys.executable, str(script), "--json", str(out), "--rounds", str(args.rounds)]
            cmd += ["--silos", *map(str, args.silos)]
        else:
            cmd = [sys.executable, "bench/time_to_accuracy.py", "--only", *args.only]
            cmd += ["--json", str(out), *(["--quick"] if args.quick else [])]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
        return {f["name"]: float(f["value"]) for f in json.loads(out.read_text())}


def unit_of(name: str, better: str) -> str:
    if "per_silo" in name:
        return "ms/silo"
    return "s/round" if better == "lower" else "upd/s"


def compare(base: dict[str, list[float]], head: dict[str, list[float]]) -> list[Figure]:
    figures = []
    for name in sorted(set(base) & set(head)):
        b, h = statistics.median(base[name]), statistics.median(head[name])
        better = "higher" if name.startswith(HIGHER_IS_BETTER) else "lower"
        figures.append(
            Figure(
                name,
                h,
                unit_of(name, better),
                b,
                h / b,
                f"{better} is better; head vs base",
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit measured as the baseline")
    parser.add_argument("--head", default=str(REPO), help="a commit, or a tree (default: this one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", nargs="+", choices=("overhead", "absorb"), default=["overhead", "absorb"]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bench", choices=("tta", "scale"), default="tta")
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 100, 250])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fedasync-compare-"))
    trees: list[Path] = []
    try:
        base_tree = checkout(args.base, scratch / "base")
        trees.append(base_tree)
        head_path = Path(args.head)
        if head_path.is_dir():
            head_tree = head_path.resolve()
        else:
            head_tree = checkout(args.head, scratch / "head")
            trees.append(head_tree)
        seen: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
        for i in range(args.repeats):
            order = [("base", base_tree), ("head", head_tree)]
            for side, tree in order if i % 2 == 0 else order[::-1]:
                print(f"repeat {i + 1}/{args.repeats}: {side} ({tree})", file=sys.stderr)
                for name, value in run_side(tree, args).items():
                    seen[side].setdefault(name, []).append(value)
                    print(f"  {side} {name}: {value:.4g}", file=sys.stderr, flush=True)
        for side in ("base", "head"):
            for name, values in seen[side].items():
                shown = ", ".join(f"{v:.4g}" for v in values)
                print(f"{side} {name}: {shown}", file=sys.stderr)
        emit(compare(seen["base"], seen["head"]), args.json_path)
    finally:
        for tree in trees:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
            )
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
