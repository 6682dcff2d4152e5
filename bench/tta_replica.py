"""Time to accuracy in virtual time: what the algorithms need, with no stack at all.

    python bench/tta_replica.py [--seeds 10-39] [--clients 10] [--json PATH]

A replica of `bench/time_to_accuracy.py`'s three arms with the orchestration taken out:
the same data (`demo_silo`, Dirichlet 0.5), trainer (numpy, one `fit` per epoch with the
client's seeds), straggler delays (the demo's seeded lognormal draws, one per update),
task configs (`DemoOptions.task_config`) and aggregation code (`FedAvgAccumulator`,
`absorb`), but time is the sum of the simulated compute delays only: a sync round takes
its slowest silo's delay; an async silo's update is absorbed the moment it finishes and
the silo starts again on the head, as its go-ahead tells it to. Each arm's figure is the
median over seeds of the first version's time at >= 0.90 held-out accuracy; the async
arms carry the sync median as baseline, so `ratio` is what the algorithm alone would
give. Side by side with `time_to_accuracy.py`'s ratios it shows what the stack costs.

Use seeds other than the stack bench's (0-4) to choose settings: this is where the demo's
FedBuff step (K = max(2, N/5), eta = 2K/N) was chosen, on seeds 10-39.

Results (2026-11-26), medians in virtual seconds:

    seeds    sync FedAvg   FedAsync        FedBuff (K = 2, eta = 0.4)
    10-39    9.98          2.62 (0.26x)    2.26 (0.23x)    (K = 5, eta = 0.5: 3.47, 0.35x)
    0-4      9.75          2.72 (0.28x)    1.48 (0.15x)

On seeds 0-4 the stack (`time_to_accuracy.py`) measured 11.0-11.1, 4.62-4.96 and
2.62-2.67 s: it adds about 1.1-2.2 s to each arm, the start of the task (about 0.5 s
before the first notice) and each update's round trip through the stack.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import Figure, emit

from client.data import Dataset, demo_silo
from client.trainers import get_trainer
from client.worker import training_seed
from fedasync.core.asyncagg import AsyncState, absorb
from fedasync.core.config import TaskConfig
from fedasync.core.errors import StaleUpdateError
from fedasync.core.fedavg import FedAvgAccumulator
from fedasync.demo import DemoOptions

TARGET = 0.90
ARMS = (
    ("sync", None, "fedavg"),
    ("async", "fedasync", "fedasync"),
    ("async", "fedbuff", "fedbuff"),
)
TRAINER = get_trainer("numpy")


@dataclass
class Setting:
    seed: int
    clients: int
    sigma: float = 1.0
    base_s: float = 0.5
    epochs: int = 2
    horizon_s: float = 60.0

    def config(self, mode: str, strategy: str | None) -> TaskConfig:
        opts = DemoOptions(mode=mode, strategy=strategy, clients=self.clients, seed=self.seed)
        return opts.task_config()

    def client_seed(self, i: int) -> int:
        return self.seed * 1000 + i  # the demo's (`_client_config`, `_silo_trainer`)


def local_update(
    weights: Any, silo: Dataset, s: Setting, i: int, version: int, seq: int | None
) -> tuple[Any, int]:
    """What `client.worker.train` does: one `fit` per epoch, the update's seed + epoch."""
    seed = training_seed(s.client_seed(i), f"silo-{i}", version, seq)
    num_examples = len(silo.y)
    for epoch in range(s.epochs):
        result = TRAINER.fit(weights, silo.x, silo.y, epochs=1, seed=seed + epoch)
        weights, num_examples = result.weights, result.num_examples
    return weights, num_examples


def accuracy(weights: Any, test: Dataset) -> float:
    return float(TRAINER.evaluate(weights, test.x, test.y)["accuracy"])


def sync_time(s: Setting, silos: list[Dataset], test: Dataset) -> float | None:
    delays = [random.Random(s.client_seed(i)) for i in range(s.clients)]
    weights, now, round_id = TRAINER.init_weights(s.seed), 0.0, 0
    while now <= s.horizon_s:
        acc = FedAvgAccumulator()
        slowest = 0.0
        for i, silo in enumerate(silos):
            local, n = local_update(weights, silo, s, i, round_id, None)
            acc.add(local, n)
            slowest = max(slowest, s.base_s * math.exp(delays[i].gauss(0.0, s.sigma)))
        weights, now, round_id = acc.result(), now + slowest, round_id + 1
        if accuracy(weights, test) >= TARGET:
            return now
    return None


def async_time(s: Setting, strategy: str, silos: list[Dataset], test: Dataset) -> float | None:
    cfg = s.config("async", strategy)
    delays = [random.Random(s.client_seed(i)) for i in range(s.clients)]
    state, buffer_sum = AsyncState(), None
    versions = {0: TRAINER.init_weights(s.seed)}
    queue: list[tuple[float, int, int, int]] = []  # (finish time, silo, base version, seq)

    def start(now: float, i: int) -> None:
        delay = s.base_s * math.exp(delays[i].gauss(0.0, s.sigma))
        heapq.heappush(queue, (now + delay, i, state.version, state.absorbed))

    for i in range(s.clients):
        start(0.0, i)
    while queue:
        now, i, base, seq = heapq.heappop(queue)
        if now > s.horizon_s:
            return None
        local, _ = local_update(versions[base], silos[i], s, i, base, seq)
        try:
            out = absorb(
                state,
                cfg,
                base_version=base,
                global_w=versions[state.version],
                client_w=local,
                base_w=versions[base],
                buffer_sum=buffer_sum,
            )
        except StaleUpdateError:
            start(now, i)  # a stale silo is sent the head at once
            continue
        state, buffer_sum = out.state, out.buffer_sum
        if out.new_global is not None:
            versions[state.version] = out.new_global
            if accuracy(out.new_global, test) >= TARGET:
                return now
        start(now, i)
    return None


def run(seeds: list[int], clients: int) -> dict[str, list[float | None]]:
    times: dict[str, list[float | None]] = {label: [] for *_, label in ARMS}
    for seed in seeds:
        s = Setting(seed=seed, clients=clients)
        splits = [demo_silo(i, clients, alpha=0.5, seed=seed) for i in range(clients)]
        silos, test = [train for train, _ in splits], splits[0][1]
        for mode, strategy, label in ARMS:
            t = (
                sync_time(s, silos, test)
                if mode == "sync"
                else async_time(s, str(strategy), silos, test)
            )
            times[label].append(t)
            print(f"seed {seed} {label}: {t if t is not None else 'never'}", file=sys.stderr)
    return times


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seed_range, default=seed_range("10-39"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    times = run(args.seeds, args.clients)
    medians = {
        label: statistics.median(math.inf if t is None else t for t in values)
        for label, values in times.items()
    }
    sync = medians["fedavg"]
    figures = [
        Figure(
            f"replica_tta{TARGET:.2f}_{label} (reached "
            f"{sum(t is not None for t in times[label])}/{len(args.seeds)})",
            value,
            "virtual s",
            None if label == "fedavg" else sync,
            None if label == "fedavg" or not math.isfinite(sync) else value / sync,
            None,
        )
        for label, value in medians.items()
    ]
    emit(figures, str(args.json) if args.json else None)


if __name__ == "__main__":
    main()
