"""Orchestration cost per silo of a sync round, at 10, 100 and 250 silos, side by side.

    python bench/scale.py [--silos 10 100 250] [--rounds 3] [--json PATH] [--profile]
                          [--poll-s 20]

Each silo is a scripted client (tests/integration/scripted.py) that answers a round's
notice at once with a small model: no training, so a round's time, from its ROUND item's
`opened_at` to its `closed_at`, is all orchestration: the notice's fan-out over the topic
shards, every silo's receive, download, upload and record, the verdicts and the close.
The figure is the median over rounds of that time divided by the number of silos; the
baseline is the same figure at the first (smallest) count, measured in the same run, so
the ratio says how flat the cost per silo stays (target: flat, and <= 30 ms per silo per
round at 100 silos). 250 silos take two topic shards (200 filter policies per topic).
Each silo signs with its own key from the stack, as a deployed silo does, and opens its
clients before round 0 (as `fedasync client run` does), so no round pays for building them.
`bench/compare.py --bench scale --base COMMIT` runs this script on two commits side by side.

`--profile` also prints, per silo per round, the moto server's requests by who signed
and operation, with its CPU per request type (`fedasync.local.moto_timing`). Measured
(2026-12-01, 2 rounds, load average 6-7; moto CPU in ms per silo per round):

    who        operation                  10 silos      100 silos     250 silos
                                          req  cpu      req  cpu      req  cpu
    client     sqs:ReceiveMessage         1.50  5.0     1.50  7.6     1.50  7.8
    client     sqs:DeleteMessage          1.50  2.5     1.50  3.4     1.50  3.5
    client     s3:GET (global) / PUT      2.00  5.0     2.00  5.0     2.00  6.3
    client     dynamodb:PutItem (update)  1.00  3.8     1.00  3.5     1.00  3.4
    aggregate  dynamodb:UpdateItem        1.45 11.0     1.14 12.2     1.12 11.3
    aggregate  s3:GET (the update)        1.05  2.3     1.00  2.6     1.00  3.1
    aggregate  streams:GetRecords         1.10 12.7     0.55  3.5     0.51  3.5
    aggregate  BatchGetItem / Query       0.65  8.7     0.30  8.8     0.28  8.9
    control, state machine, rest          1.55 10.0     0.15  2.1     0.07  1.1
    total                                11.90 60.8     9.32 48.7     9.09 48.9
    the same code, `--poll-s 1` (the silos' long poll as the bench had it; one run):
    client     sqs:ReceiveMessage         2.40  6.9    10.94 30.0    31.05 89.0
    total                                13.40 61.6    18.80 68.4    38.62 132.2
    (wall per silo 151 / 230 / 361 ms, CPU per silo-round 165 / 175 / 343 ms, against
    104 / 172 / 123 and 151 / 114 / 112 with 20 s polls, a busier minute)

Fixed per silo: its five requests (receive, delete, GET the global, PUT its model, put
its record), and the aggregate function's verdict write (an UpdateItem, moto's dearest
request: its expression engine), the read of the update and a share of a BatchGetItem.
Fixed per round (so shrinking per silo): the round's Query (its cost grows with N), the
control function, the state machine, the stream pump's idle reads (one per 50 ms).
What grew with N (before this table): the silos' idle long polls. They polled 1 s at a
time, so each silo made one receive per second of the round, and a round lasts about
N x the per-silo cost: at 100 silos 9.9 receives per silo per round (28.5 ms of moto's
CPU, against 7.6 now), more at 250, which slowed the round, which added polls. A
deployed silo polls 20 s (`ClientConfig.wait_time_s`), as the silos here now do. Each
client's first call also parsed the CA bundle again (~50 ms of CPU, three clients per
silo, all in round 0) whenever AWS_CA_BUNDLE is set: `fedasync.aws.session`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scale_profile
from bench._report import Figure, emit, median
from fedasync import logs
from fedasync.aws.session import AwsContext
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from tests.integration.scripted import ScriptedClient
from tests.integration.test_server_sync import initial_model

# A silo's long poll. The bench's silos once polled 1 s at a time (the test harness's
# default): each silo then made a receive per second of the round, in moto and in its
# own botocore, ~6 ms of CPU each; a round of N silos lasts ~N x the per-silo cost, so
# that idle polling grew with N per silo (at 100 silos ~10 receives per silo per round,
# ~30 % of moto's CPU; at 250 more, which slowed the round, which added polls).
WAIT_S = 20


async def answer_rounds(client: ScriptedClient, task_name: str, wait_s: int = WAIT_S) -> None:
    """Answer every round notice of the task until its final notice, long-polling
    `wait_s` as a deployed silo does (`ClientConfig.wait_time_s`, 20 s by default)."""
    while True:
        notice = await client.poll(wait_s=wait_s)
        if notice is None or notice.task_name != task_name:
            continue
        if notice.final:
            return
        await client.submit(notice)


def cpu_seconds() -> float:
    """CPU time so far of this process and its children (the moto server): steadier than
    wall time on a shared machine, and the sum of every side's work."""
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in (me, *me.children(recursive=True)))


async def per_silo_round_seconds(
    silos: int, rounds: int, profile: dict[int, Any] | None = None, wait_s: int = WAIT_S
) -> tuple[list[float], float]:
    """Each round's wall time per silo, and the CPU seconds per silo and round; with
    `profile`, also the moto server's requests by type (`bench/scale_profile.py`)."""
    timing = Path(tempfile.mkdtemp(prefix="fedasync-scale-")) / "timing.jsonl"
    if profile is not None:
        os.environ[scale_profile.ENV_TIMING_LOG] = str(timing)
    ids = tuple(f"silo-{i:03d}" for i in range(silos))
    spec = Deployment(prefix=f"scale{silos}", clients=tuple(ClientSpec(client_id=c) for c in ids))
    cfg = TaskConfig.parse(
        {"task_name": f"scale-{silos}", "clients": list(ids), "rounds": rounds,
         "round_timeout_s": 600, "round_check_s": 600}
    )  # fmt: skip
    async with EmbeddedStack(spec) as stack:
        e = stack.endpoints
        store = ServerStore(stack.aws, e)
        async with AsyncExitStack() as own:
            # each silo has its own key and connections, as separate silos do (one shared
            # pool of 50 would queue 250 long polls behind each other)
            contexts = [
                await own.enter_async_context(
                    AwsContext(e.endpoint_url, credentials=stack.credentials(f"client:{c}"))
                )
                for c in ids
            ]
            for aws in contexts:  # before round 0, as a silo's run does
                await aws.sqs(), await aws.s3(), await aws.dynamodb()
            clients = [
                ScriptedClient(aws, e.bucket, e.table, e.client_queue_urls[c], c, i, 10)
                for i, (aws, c) in enumerate(zip(contexts, ids, strict=True))
            ]
            cpu, since = cpu_seconds(), time.time()
            await start_task(store, e.state_machine_arn, cfg, initial_model())
            await asyncio.wait_for(
                asyncio.gather(*(answer_rounds(c, cfg.task_name, wait_s) for c in clients)),
                600 + 4 * silos * rounds,  # a loaded machine: 250 silos x 3 rounds took > 900 s
            )
            cpu = (cpu_seconds() - cpu) / (silos * rounds)
            until = time.time()
        if profile is not None:
            os.environ.pop(scale_profile.ENV_TIMING_LOG, None)
            who = {c.access_key_id: p for p, c in e.principals.items()}
            profile[silos] = scale_profile.read(timing, who, since, until)
        spans = []
        for r in range(rounds):
            item = await store.get_item(cfg.task_name, keys.round_sk(r)) or {}
            spans.append((float(item["closed_at"]) - float(item["opened_at"])) / silos)
        return spans, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 100, 250])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument(
        "--profile", action="store_true", help="also print moto's requests per silo by type"
    )
    parser.add_argument(
        "--poll-s", type=int, default=WAIT_S, help="the silos' long poll (1: as the bench was)"
    )
    args = parser.parse_args()
    logs.configure(level="WARNING")
    profile: dict[int, Any] | None = {} if args.profile else None
    measured = {
        n: asyncio.run(per_silo_round_seconds(n, args.rounds, profile, args.poll_s))
        for n in args.silos
    }
    if profile:
        print(scale_profile.table(profile, args.rounds), file=sys.stderr)
    base_n = min(measured)
    figures = []
    for n in args.silos:
        wall, base_wall = median(measured[n][0]), median(measured[base_n][0])
        cpu, base_cpu = measured[n][1], measured[base_n][1]
        target = "<= 30 ms at 100 silos; flat per silo" if n == 100 else "flat per silo"
        figures += [
            Figure(
                f"sync_round_orchestration_per_silo_{n}_silos",
                1000 * wall, "ms/silo", 1000 * base_wall, wall / base_wall, target,
            ),
            Figure(
                f"cpu_per_silo_round_{n}_silos",
                1000 * cpu, "ms/silo", 1000 * base_cpu, cpu / base_cpu, "flat per silo",
            ),
        ]  # fmt: skip
    emit(figures, args.json_path)


if __name__ == "__main__":
    main()
