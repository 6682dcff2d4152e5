"""Time to accuracy, sync round overhead and async absorb rate on the embedded stack.

    python bench/time_to_accuracy.py [--seeds 5] [--quick] [--only tta overhead absorb]
                                     [--json PATH]

Three measurements, each printed next to a baseline measured in the same run:

1. Time to 0.90 held-out accuracy (`fedasync.ops.demo.run_demo`, numpy trainer on digits),
   10 clients, Dirichlet(0.5) split, stragglers with a seeded lognormal(0, sigma=1) factor
   on a nominal 0.5 s of compute per update, one run per seed and arm (`ARMS`, `--arms`):
   sync FedAvg; sync FedAdam (FedAvg + server Adam, lr 0.3); FedAsync; FedBuff as the
   demo runs it (`normalize: k`, K = 2, eta = 0.7); FedBuff as it was before `normalize`
   (`weights`, eta = 0.4); FedBuff + server Adam (lr 0.05). The lrs and FedBuff's step
   were chosen in `tta_replica.py` on seeds the bench does not report (10-39). Figure:
   the median over seeds of the first `seconds` of the accuracy curve at >= 0.90 (seeds
   that never reach it count as +inf in the median and are reported as `reached k/n`).
   Every other arm carries sync FedAvg's median as baseline, so `ratio` is arm/FedAvg
   (target: FedBuff <= 0.33x sync). The arms run seed by seed, interleaved.
2. Orchestration overhead per sync round: 10 clients with the numpy trainer and
   `train_seconds=0` (no simulated compute), N rounds. The figure is
   (wall time of the run - time the clients spent inside `fit`) / rounds, where the fit
   time is measured by wrapping the trainer (summed per round over the slowest client,
   since clients train in parallel). Baseline: the same 10 fits and the same FedAvg
   (`FedAvgAccumulator`) + codec encode/decode of the 10 local models done in a plain
   in-process loop per round, without orchestration minus the same fit time - i.e. what
   a round costs when nothing goes through S3, DynamoDB, SQS, SNS or Step Functions.
   Target: <= 0.25 s per round.
3. Async updates absorbed per second at 1M float32 parameters: the embedded stack
   driven by hand as a client would (objects uploaded first, then the UpdateRecord items
   written back to back); the rate is accepted updates / (last `decided_at` - first
   record write). FedAsync and FedBuff (K = 5). Baseline: the pure in-memory core on the
   same arrays (`codec.decode` of the update, `absorb`, `codec.encode` of the new
   global/buffer), so `ratio` shows what the I/O and orchestration cost. Target >= 20/s.

Results (medians), 2-core machine shared with other jobs (expect +-25 % run to run),
`--seeds 5`. "first" is the server as of commit 942f646; "11-25" the first session's
end (3105e12); "11-26" the second's (f02dff2); "11-26b" this one (three full runs):

    figure                           first         11-25          11-26           11-26b          target
    tta0.90 sync FedAvg              -             16.2 s         11.4-11.6 s     11.0-11.1 s
    tta0.90 FedAsync                 -             15.2 s, 0.94x  5.45-5.48 s,    2.66-4.96 s,
                                                                  0.47-0.48x      0.24-0.45x
    tta0.90 FedBuff                  never         16.0 s, 0.99x  5.81-6.42 s,    2.62-2.76 s,    <= 0.33x
                                                                  0.50-0.56x      0.24-0.25x
    sync round overhead, 10 clients  2.45 s/round  1.00 s/round   0.34 s          0.21-0.23 s     <= 0.25 s
                                     (plain loop baseline: 0.0007-0.0008 s/round)
    absorb FedAsync 1M, full run     6.3 upd/s     14.1 upd/s     26.1 upd/s      26.3-29.9       >= 20/s
    absorb FedBuff 1M, full run      4.6 upd/s     18.2 upd/s     32.6 upd/s      44.4-48.2       >= 20/s
                                     (pure core baseline: 115-170 upd/s)

2026-12-01, the strategy arms (`--only tta`; two runs under other jobs' load, averages
10-22 with 3 seeds / 5-8 with 2 seeds): sync FedAvg 29.5 / 17.5 s; ratios to it: FedAdam
0.84 / 1.36, FedAsync 0.75 / 0.67, FedBuff k (eta 0.7) 0.54 / 0.51, FedBuff weights
(eta 0.4) 0.76 / 0.48, FedBuff + Adam 1.31 / 0.86. Replica and reading: docs/strategies.md.

What moved the 11-26b figures:
- FedBuff's demo step: K = max(2, N/5) and eta = 2K/N (K = 2, eta = 0.4 for 10 silos),
  where it was K = N/2 and eta = K/N. Chosen in a virtual-time replica of the demo (same
  data, trainer, seeds of the delays, `absorb`; seeds 10-39, none of the bench's): it
  needs 28 updates to 0.90 against FedAvg's 35, where the old step needed 40-45; server
  momentum, FedAdam/FedYogi and MIFA did not help, and eta/K much above 1/3 turns
  unstable as staleness grows. The replica also showed why the real stack lagged it: a
  per-update cost of about 0.5 s, half of a silo's mean compute.
- That cost: every accepted update sent a go-ahead to every silo, so each update was N
  messages to receive and delete, most of moto's requests in an async run. The go-ahead
  now goes to the silos whose updates were absorbed (and to those owed one after a
  rejection); a silo that is training takes the newest notice when it is done.
- The accuracy curve is timed at each version's commit (the ledger's `committed_at`), not
  when the demo's evaluator, polling the head five times a second, got to it.
- Sync rounds: a stream batch reads the TASK item, the round item and every expected
  client's update in one BatchGetItem (a warm container keeps the task's roster, checked
  against the config), so no query is needed to see the round complete and the close
  aggregates from what was read; verdicts are written while the next object is read; a
  client looks its record up while the global model downloads.
- moto, in its own process: Step Functions keeps one boto3 client per service and parses
  each JSONPath once (it made a client, and a connection, per call); the dispatcher lists
  its modules once (it listed its package per request); a failed transaction is rolled
  back in place, touching only what it named, instead of a deep copy of the whole table
  and stream per transaction (which also left open stream readers on a discarded shard).
  Together moto's CPU per sync round went from 0.29 to 0.15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import Figure, emit, median

from fedasync import logs
from fedasync.aws.records import serialize_item
from fedasync.core import codec, keys
from fedasync.core.asyncagg import AsyncState, absorb
from fedasync.core.config import TaskConfig
from fedasync.core.messages import UpdateRecord
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.demo import DemoOptions
from fedasync.resources import ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task

TARGET_ACCURACY = 0.90


# --- 1. time to accuracy ---------------------------------------------------------------


class Arm(NamedTuple):
    """One arm of the comparison: a demo mode and strategy, and the task config fields it
    sets on top of the demo's own (`DemoOptions.extra_config`)."""

    mode: str
    strategy: str | None
    label: str
    extra: dict[str, Any] | None = None


# The server optimizers' lr were chosen in `tta_replica.py --sweep` on seeds 10-19, none
# of the reported ones (0-4): see its docstring for the sweep and the result.
FEDADAM = {"kind": "adam", "lr": 0.3}
FEDBUFF_ADAM = {"kind": "adam", "lr": 0.05}
ARMS = (
    Arm("sync", None, "fedavg"),
    Arm("sync", None, "fedadam", {"server_optimizer": FEDADAM}),
    Arm("async", "fedasync", "fedasync"),
    Arm("async", "fedbuff", "fedbuff"),  # normalize: k, the paper's and the default
    # the behaviour before `normalize`: the staleness weights' sum, with its step (eta 0.4)
    Arm(
        "async",
        "fedbuff",
        "fedbuff_weights",
        {"strategy_options": {"normalize": "weights"}, "server_lr": 0.4},
    ),
    Arm("async", "fedbuff", "fedbuff_adam", {"server_optimizer": FEDBUFF_ADAM}),
)
SYNC_LABEL = "fedavg"  # every other arm's baseline
# rounds (sync) or versions (async; a FedBuff version is K = 2 updates) per arm: past its
# time to 0.90 on the seeds measured, and not much further
LENGTHS = {
    "fedavg": 8,
    "fedadam": 8,
    "fedasync": 70,
    "fedbuff": 40,
    "fedbuff_weights": 40,
    "fedbuff_adam": 40,
}


def time_to(curve: list[dict[str, float]], target: float = TARGET_ACCURACY) -> float | None:
    return next((p["seconds"] for p in curve if p["accuracy"] >= target), None)


def isolated(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a fresh process: moto's state is process-wide, so a second demo in the
    same process would meet the first one's task, stream records and objects."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(fn, *args).result()


def arm_options(arm: Arm, seed: int, length: int = 1, out: Path | None = None) -> DemoOptions:
    """An arm's demo: 10 silos, numpy trainer, Dirichlet(0.5), stragglers sigma = 1;
    `length` rounds (sync) or versions (async). `tta_replica.py` replays the same."""
    return DemoOptions(
        mode=arm.mode,
        strategy=arm.strategy,
        extra_config=dict(arm.extra or {}),
        clients=10,
        rounds=length,
        max_versions=length,
        trainer="numpy",
        stragglers_sigma=1.0,
        seed=seed,
        dirichlet_alpha=0.5,
        out=out,
    )


def run_arm(arm: Arm, seed: int, length: int, out: Path) -> dict[str, Any]:
    from fedasync.ops.demo import run_demo

    logs.configure(level="WARNING")
    return asyncio.run(run_demo(arm_options(arm, seed, length, out)))


def median_or_inf(values: list[float | None]) -> float:
    return float(statistics.median([math.inf if v is None else v for v in values]))


def bench_tta(seeds: int, lengths: dict[str, int], arms: tuple[Arm, ...] = ARMS) -> list[Figure]:
    """Every arm on every seed, interleaved (seed by seed) so that load on the shared
    machine falls on all arms alike."""
    times: dict[str, list[float | None]] = {arm.label: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for arm in arms:
                out = Path(tmp) / f"{arm.label}-{seed}"
                summary = isolated(run_arm, arm, seed, lengths[arm.label], out)
                t = time_to(summary["accuracy_curve"])
                times[arm.label].append(t)
                print(
                    f"tta {arm.label} seed {seed}: {t if t is not None else 'never'} s "
                    f"(final {summary['final_accuracy']}, {summary['versions']} versions, "
                    f"wall {summary['wall_seconds']} s)",
                    file=sys.stderr,
                )
    return tta_figures(times, seeds, "s")


def tta_figures(times: dict[str, list[float | None]], seeds: int, unit: str) -> list[Figure]:
    """Median per arm; every arm but sync FedAvg carries sync FedAvg's median as baseline."""
    sync = median_or_inf(times[SYNC_LABEL])
    figures = []
    for label, values in times.items():
        value = median_or_inf(values)
        reached = sum(1 for t in values if t is not None)
        is_sync = label == SYNC_LABEL
        ratio = None if is_sync or not math.isfinite(sync) else value / sync
        target = "FedBuff <= 0.33x sync" if label == "fedbuff" else None
        figures.append(
            Figure(
                f"tta{TARGET_ACCURACY:.2f}_{label} (reached {reached}/{seeds})",
                value,
                unit,
                None if is_sync else sync,
                ratio,
                target,
            )
        )
    return figures


# --- 2. sync round overhead --------------------------------------------------------------


class FitClock:
    """Wraps a trainer; records every fit's (start, end) so training time can be taken out."""

    def __init__(self, inner: Any, spans: list[tuple[float, float]]) -> None:
        self.inner, self.name, self.spans = inner, inner.name, spans

    def init_weights(self, seed: int) -> Any:
        return self.inner.init_weights(seed)

    def fit(self, weights: Any, x: Any, y: Any, *, epochs: int, seed: int) -> Any:
        t0 = time.time()  # the server stamps rounds with time.time(): same clock
        try:
            return self.inner.fit(weights, x, y, epochs=epochs, seed=seed)
        finally:
            self.spans.append((t0, time.time()))

    def evaluate(self, weights: Any, x: Any, y: Any) -> Any:
        return self.inner.evaluate(weights, x, y)


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Time during which at least one client was inside `fit` (clients train in parallel)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def round_spans(events_path: Path) -> list[tuple[float, float]]:
    """(opened_at, end) per round from the run's ledger; a round ends when the next opens."""
    import json

    rounds = sorted(
        (e["round_id"], float(e["opened_at"]), float(e["closed_at"]))
        for e in map(json.loads, events_path.read_text().splitlines())
        if e.get("kind") == "round" and "opened_at" in e and "closed_at" in e
    )
    return [
        (opened, rounds[i + 1][1] if i + 1 < len(rounds) else closed)
        for i, (_, opened, closed) in enumerate(rounds)
    ]


def clipped(spans: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    return [(max(x, a), min(y, b)) for x, y in spans if y > a and x < b]


def stack_round_overhead(rounds: int, seed: int) -> float:
    """Median over rounds of (round span - time any client was inside fit)."""
    import fedasync.ops.demo as demo
    from client.trainers import get_trainer

    logs.configure(level="WARNING")
    spans: list[tuple[float, float]] = []
    real = demo.get_trainer
    demo.get_trainer = lambda name="numpy", **kw: FitClock(get_trainer(name, **kw), spans)  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            opts = demo.DemoOptions(
                mode="sync", clients=10, rounds=rounds, train_seconds=0.0, seed=seed, out=Path(tmp)
            )
            summary = asyncio.run(demo.run_demo(opts))
            per_round = [
                (b - a) - union_seconds(clipped(spans, a, b))
                for a, b in round_spans(Path(summary["events_path"]))
            ]
    finally:
        demo.get_trainer = real
    if len(per_round) != rounds:
        print(f"overhead: {len(per_round)} of {rounds} rounds in the ledger", file=sys.stderr)
    if not per_round:  # no round times recorded: fall back to the whole run
        return (float(summary["wall_seconds"]) - union_seconds(spans)) / rounds
    return median(per_round)


def loop_round_overhead(rounds: int, seed: int) -> float:
    """The same fits and FedAvg with the codec round trips, in a plain loop: no services.

    Mean per round of (loop time - fit time)."""
    from client.data import demo_silo
    from client.trainers import get_trainer
    from fedasync.core.fedavg import FedAvgAccumulator

    trainer = get_trainer("numpy")
    silos = [demo_silo(i, 10, alpha=0.5, seed=seed)[0] for i in range(10)]
    weights = trainer.init_weights(seed)
    fit_s, t0 = 0.0, time.monotonic()
    for _ in range(rounds):
        acc = FedAvgAccumulator()
        for i, silo in enumerate(silos):
            t = time.monotonic()
            result = trainer.fit(weights, silo.x, silo.y, epochs=2, seed=seed * 1000 + i)
            fit_s += time.monotonic() - t
            acc.add(codec.decode(codec.encode(result.weights)), result.num_examples)
        weights = codec.decode(codec.encode(acc.result()))
    return (time.monotonic() - t0 - fit_s) / rounds


def bench_overhead(rounds: int, repeats: int) -> list[Figure]:
    stack = median([isolated(stack_round_overhead, rounds, seed) for seed in range(repeats)])
    loop = median([loop_round_overhead(rounds, seed) for seed in range(repeats)])
    return [
        Figure("sync_round_overhead_10_clients", stack, "s/round", loop, stack / loop, "<= 0.25 s")
    ]


# --- 3. async absorb rate ---------------------------------------------------------------


def make_model(params: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {"conv/kernel": params // 2, "dense1/kernel": params * 2 // 5}
    sizes["dense2/kernel"] = params - sum(sizes.values())
    return {k: rng.standard_normal(v, dtype=np.float32) for k, v in sizes.items()}


def absorb_config(name: str, strategy: str, clients: list[str], updates: int) -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": name,
            "mode": "async",
            "strategy": strategy,
            "clients": clients,
            "alpha": 0.6,
            "staleness": "polynomial(0.5)",
            "buffer_size": 5,
            "max_staleness": updates + 1,
            "max_versions": updates + 1,  # never reached: the run ends by itself
            "heartbeat_s": 600,
            "deadline_s": 3600,
        }
    )


def core_rate(
    cfg: TaskConfig, initial: dict[str, np.ndarray], blobs: list[bytes], repeats: int = 1
) -> float:
    """Updates/s of the pure core: decode, absorb, encode the new global/buffer."""
    rates = []
    for _ in range(repeats):
        state, global_w, buffer_sum = AsyncState(), initial, None
        t0 = time.perf_counter()
        for blob in blobs:
            out = absorb(
                state,
                cfg,
                base_version=0,
                global_w=global_w,
                client_w=codec.decode(blob),
                base_w=initial,
                buffer_sum=buffer_sum,
            )
            state = out.state
            if out.new_global is not None:
                codec.encode(out.new_global)
                global_w, buffer_sum = out.new_global, None
            if out.buffer_sum is not None:
                codec.encode(out.buffer_sum)
                buffer_sum = out.buffer_sum
        rates.append(len(blobs) / (time.perf_counter() - t0))
    return median(rates)


async def stack_rate(
    strategy: str, initial: dict[str, np.ndarray], blobs: list[bytes], clients: list[str]
) -> tuple[float, int]:
    """Accepted updates/s at the server, first record write to last verdict."""
    # moto's state is process-wide: a fresh prefix and task name per run
    run = uuid.uuid4().hex[:8]
    name = f"absorb-{strategy}-{run}"
    cfg = absorb_config(name, strategy, clients, len(blobs))
    spec = Deployment(prefix=f"b{run}", clients=tuple(ClientSpec(client_id=c) for c in clients))
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedStack(spec, event_log_path=Path(tmp) / "events.jsonl") as stack:
            e = stack.endpoints
            store = ServerStore(stack.aws, e)
            await start_task(store, e.state_machine_arn, cfg, initial)
            # the task is open once the completion token is kept
            while not (await store.get_task(name) or {}).get("token"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            records = []
            for i, blob in enumerate(blobs):
                client = clients[i % len(clients)]
                update_id = f"{client}-u{i:04d}"
                key = keys.local_key(name, client, 0, update_id)
                await store.put_object(key, blob, codec.sha256_bytes(blob))
                records.append(
                    UpdateRecord(
                        task_name=name,
                        client_id=client,
                        update_id=update_id,
                        base_version=0,
                        s3_key=key,
                        sha256=codec.sha256_bytes(blob),
                        size_bytes=len(blob),
                        num_examples=100,
                    )
                )
            ddb = await stack.aws.dynamodb()
            t0 = time.time()
            for record in records:
                await ddb.put_item(TableName=e.table, Item=serialize_item(record.item()))
            # poll the TASK counter (cheap), not the update items: the poll shares the server
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                task = await store.get_task(name) or {}
                if int(task.get("absorbed", 0)) >= len(blobs):
                    break
                await asyncio.sleep(0.1)
            decided = await store.query_prefix(name, keys.UPDATE_PREFIX)
            accepted = [u for u in decided if u.get("verdict") == "accepted"]
            last = max(float(u["decided_at"]) for u in decided if "decided_at" in u)
            return len(accepted) / (last - t0), len(accepted)


def bench_absorb(params: int, updates: int, repeats: int) -> list[Figure]:
    clients = [f"silo-{i}" for i in range(10)]
    initial = make_model(params, 0)
    blobs = []
    for i in range(updates):
        rng = np.random.default_rng(100 + i)
        local = {
            k: (v + 0.01 * rng.standard_normal(v.size, dtype=np.float32)).astype(np.float32)
            for k, v in initial.items()
        }
        blobs.append(codec.encode(local))
    figures = []
    for strategy in ("fedasync", "fedbuff"):
        cfg = absorb_config("core", strategy, clients, updates)
        base = core_rate(cfg, initial, blobs)
        runs = [asyncio.run(stack_rate(strategy, initial, blobs, clients)) for _ in range(repeats)]
        rate = median([r for r, _ in runs])
        accepted = min(n for _, n in runs)
        if accepted != updates:
            print(f"absorb {strategy}: only {accepted}/{updates} accepted", file=sys.stderr)
        figures.append(
            Figure(
                f"absorb_rate_{strategy}_{params // 1_000_000}M",
                rate,
                "upd/s",
                base,
                rate / base,
                ">= 20/s",
            )
        )
    return figures


# --- CLI --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer seeds, rounds and updates")
    parser.add_argument("--only", nargs="+", choices=("tta", "overhead", "absorb"), default=None)
    parser.add_argument(
        "--arms", nargs="+", choices=[a.label for a in ARMS], default=None, help="tta arms"
    )
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="absorb runs per strategy")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    logs.configure(level="WARNING")
    only = set(args.only or ("tta", "overhead", "absorb"))
    figures: list[Figure] = []
    seeds = min(args.seeds, 2) if args.quick else args.seeds
    if "tta" in only:
        # --quick: shorter runs (a seed may then not reach 0.90)
        lengths = {k: v * 3 // 4 for k, v in LENGTHS.items()} if args.quick else LENGTHS
        arms = tuple(a for a in ARMS if args.arms is None or a.label in args.arms)
        if args.arms and SYNC_LABEL not in args.arms:
            arms = (ARMS[0], *arms)  # the baseline is always measured
        figures += bench_tta(seeds, lengths, arms)
    if "overhead" in only:
        figures += bench_overhead(5 if args.quick else 10, 1 if args.quick else 3)
    if "absorb" in only:
        updates = 20 if args.quick else args.updates
        figures += bench_absorb(args.params, updates, 1 if args.quick else args.repeats)
    emit(figures, args.json_path)


if __name__ == "__main__":
    main()
