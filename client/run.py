"""One silo run: poller, heartbeat, trainer and uploader in one TaskGroup.

`run_client` returns when the task ends (a final notice) or `stop_event` is set. A stop
cancels every part: an upload in flight is aborted (no partial object), the heartbeat
stops, and held messages are left to become visible again for the next run. Several
runs may share one process (the demo runs N silos), each with its own `stop_event`.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from client.config import ClientConfig
from client.data import Dataset
from client.heartbeat import final_beat, heartbeat_loop
from client.poller import poll_loop
from client.ports import AwsClientPorts, ClientPorts
from client.progress import DISABLED, Progress
from client.secagg import SecAggSilo
from client.secagg_run import RoundTrainer, secagg_loop, secagg_silo
from client.state import ClientReport, RunState
from client.trainers.base import Trainer
from client.worker import trainer_loop, uploader_loop
from fedasync.aws.session import AwsContext, Credentials

log = structlog.get_logger()


async def run_client(
    cfg: ClientConfig,
    *,
    trainer: Trainer,
    data: Dataset,
    stop_event: asyncio.Event | None = None,
    eval_data: Dataset | None = None,
    progress: Progress | None = None,
    ports: ClientPorts | None = None,
) -> ClientReport:
    """Run one silo until its task ends or `stop_event` is set; report what it did."""
    with bound_contextvars(task_name=cfg.task_name, client_id=cfg.client_id):
        async with AwsContext(
            cfg.deployment.endpoint_url, cfg.deployment.region, _credentials(cfg)
        ) as aws:
            if ports is None:
                await aws.open_clients("sqs", "s3", "dynamodb")
            bound = ports or await AwsClientPorts.open(aws, cfg)
            with _workdir(cfg.work_dir) as workdir, progress or DISABLED as shown:
                state = RunState(cfg, bound, trainer, data, workdir, shown, eval_data)
                silo = secagg_silo(state, aws)  # a bad key file stops the run here
                log.info(
                    "client.started",
                    trainer=trainer.name,
                    num_examples=len(data),
                    eval_examples=len(eval_data) if eval_data is not None else 0,
                )
                try:
                    await _run(state, stop_event or asyncio.Event(), silo)
                finally:
                    state.close()
                if state.report.outcome == "final":
                    await final_beat(state)
                log.info(
                    "client.finished",
                    outcome=state.report.outcome,
                    updates=len(state.report.updates),
                )
                return state.report


def _credentials(cfg: ClientConfig) -> Credentials | None:
    if cfg.aws_access_key_id is None or cfg.aws_secret_access_key is None:
        return None
    return Credentials(cfg.aws_access_key_id, cfg.aws_secret_access_key.get_secret_value())


async def _run(
    state: RunState, stop_event: asyncio.Event, silo: tuple[SecAggSilo, RoundTrainer] | None
) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            parts = [
                group.create_task(poll_loop(state), name="poller"),
                group.create_task(heartbeat_loop(state), name="heartbeat"),
                group.create_task(trainer_loop(state), name="trainer"),
                group.create_task(uploader_loop(state), name="uploader"),
                group.create_task(secagg_loop(state, silo), name="secagg"),
            ]
            group.create_task(_supervise(state, stop_event, parts), name="supervisor")
    except BaseExceptionGroup as group:
        raise _primary(group) from None


async def _supervise(
    state: RunState, stop_event: asyncio.Event, parts: list[asyncio.Task[None]]
) -> None:
    """End the run on the final notice or a stop request, by cancelling every part."""
    finished = asyncio.create_task(state.finished.wait())
    stopping = asyncio.create_task(stop_event.wait())
    try:
        await asyncio.wait({finished, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopping.cancel()
    if state.finished.is_set():
        state.report.outcome = "final"
    else:
        log.info("client.stopping", held_messages=len(state.inbox.receipts()))
    for part in parts:
        part.cancel()


def _primary(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a failed run (the others are its consequences)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _primary(exc)
        return exc
    return group


@contextmanager
def _workdir(base: Path | None) -> Iterator[Path]:
    """Models are staged on disk, not in memory; cleaned up whatever happens."""
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedasync-client-", dir=base) as path:
        yield Path(path)
