"""The trainer (download, train, write the local model to disk) and the uploader.

They run as two tasks joined by a one-slot queue, so a silo can train on the next
global version while its previous update is still uploading. The SQS message of a
notice is deleted only after its update record is written: a crash anywhere before
that leaves the message to be delivered again, and the deterministic update id turns
the second attempt into the same record, never a second update.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from functools import partial
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from client.datacheck import check_data_fits
from client.delta_upload import write_upload
from client.inbox import Held
from client.privacy import local_dp
from client.state import EndOfRun, PendingUpload, RunState
from client.trainers.base import proximal_keywords
from client.training import TrainingFailed, call_trainer, retry_later
from fedasync.aws.objects import MISSING, CorruptDownloadError
from fedasync.core import codec, keys
from fedasync.core.codec import Weights
from fedasync.core.messages import GlobalModelNotice, UpdateRecord

log = structlog.get_logger()

_RETRY_DELAY_S = 0.5
# a notice whose model stays corrupt comes back after the visibility timeout, then twice
# that, ... up to this (SQS moves it to the dead-letter queue after maxReceiveCount)
MAX_POSTPONE_S = 900
EVAL_PREFIX = "eval_"


def update_id_for(client_id: str, notice: GlobalModelNotice) -> str:
    """Deterministic per notice: a redelivered notice maps to one record.

    Sync records are keyed by round and client already; async records only by update
    id, so the client id is part of it there, with the notice's go-ahead (`seq`).
    """
    if notice.round_id is not None:
        return f"r{notice.round_id:08d}"
    base = f"{client_id}-b{notice.version:08d}"
    return base if notice.seq is None else f"{base}-s{notice.seq:08d}"


def training_seed(seed: int, client_id: str, version: int, seq: int | None = None) -> int:
    """Same inputs, same local model: a retried upload carries the very same bytes. A new
    go-ahead on the same version (`seq`) is new work: a new seed, new shuffles."""
    text = f"{seed}:{client_id}:{version}" + ("" if seq is None else f":{seq}")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:4], "big")


async def trainer_loop(state: RunState) -> None:
    while True:
        held, superseded = await state.inbox.take_newest()
        for old in superseded:
            state.report.superseded += 1
            await state.ports.delete(state.inbox.finish(old))
            log.info("client.notice_superseded", notice_version=old.version, by=held.version)
        if held.notice.final:
            await state.uploads.put(EndOfRun(held))
            return
        with bound_contextvars(version=held.version, round_id=held.notice.round_id):
            try:
                pending = await prepare_update(state, held)
            except CorruptDownloadError as exc:
                await give_back(state, held, exc)
                continue
            except TrainingFailed as exc:
                await retry_later(state, held, exc)
                continue
            state.train_failures = 0
            if pending is not None:
                await state.uploads.put(pending)


async def give_back(state: RunState, held: Held, exc: CorruptDownloadError) -> None:
    """The announced model failed its checksum: nothing is trained, the notice is kept
    (not deleted) and comes back after a growing delay; the client waits for it or for a
    newer notice. A bad object in S3 is the server's to fix, never a reason to exit."""
    key = held.notice.idempotency_key
    failures = state.corrupt_notices[key] = state.corrupt_notices.get(key, 0) + 1
    delay = min(MAX_POSTPONE_S, state.cfg.visibility_timeout_s * 2 ** (failures - 1))
    state.report.corrupt_downloads += 1
    log.warning(
        "client.download_corrupt",
        notice_version=held.version,
        seq=held.notice.seq,
        s3_key=exc.key,
        expected_sha256=exc.expected[:12],
        actual_sha256=exc.actual[:12],
        failures=failures,
        retry_in_s=delay,
    )
    await state.ports.postpone(state.inbox.release(held), delay)


async def prepare_update(state: RunState, held: Held) -> PendingUpload | None:
    """Download, train, write to disk; None if this update was recorded before."""
    cfg, notice = state.cfg, held.notice
    state.version = notice.version
    update_id = update_id_for(cfg.client_id, notice)
    round_or_base = notice.round_id if notice.round_id is not None else notice.version
    key = keys.local_key(cfg.task_name, cfg.client_id, round_or_base, update_id)
    sk = keys.update_sk(cfg.client_id, update_id, notice.round_id)
    try:
        state.phases["trainer"] = "downloading"
        weights = await _download_unless_recorded(state, notice, sk, key)
        if weights is None:
            state.report.already_recorded += 1
            await state.ports.delete(state.inbox.finish(held))
            log.info("client.update_already_recorded", update_id=update_id)
            return None
        state.phases["trainer"] = "training"
        trained, num_examples, metrics = await train(state, weights, notice)
        # local DP (privacy.mode local): what leaves the silo is clipped and noised
        trained, local_epsilon = await local_dp(state, notice, weights, trained, num_examples)
        # named per update: the previous one may still be uploading from its own file
        path = state.workdir / f"local-{update_id}.safetensors"
        # the model, or its half-precision delta against `weights` (update_encoding)
        sha, delta_dtype = await write_upload(state, notice, weights, trained, path)
        del weights  # at most the global and the local model in memory, never more
    finally:
        state.phases.pop("trainer", None)
    record = UpdateRecord(
        task_name=cfg.task_name,
        client_id=cfg.client_id,
        update_id=update_id,
        base_version=notice.version,
        round_id=notice.round_id,
        s3_key=key,
        sha256=sha,
        size_bytes=path.stat().st_size,
        num_examples=num_examples,
        metrics=metrics,
        local_epsilon=local_epsilon,
        delta_dtype=delta_dtype,
    )
    return PendingUpload(held, record, path)


async def _download_unless_recorded(
    state: RunState, notice: GlobalModelNotice, sk: str, s3_key: str
) -> Weights | None:
    """The global model, or None when this update's record exists (a redelivered notice).

    Both are waits on the network and the answer is almost always "not recorded", so the
    download starts while the record is looked up; a record found cancels it, and nothing
    is trained. The lookup decides first: a download error counts only if it is needed."""
    download = asyncio.ensure_future(download_global(state, notice))
    try:
        recorded = await state.ports.update_exists(state.cfg.task_name, sk, s3_key)
    except BaseException:
        await _cancelled(download)
        raise
    if recorded:
        await _cancelled(download)
        return None
    return await download


async def _cancelled(task: asyncio.Future[Weights]) -> None:
    """Cancel and wait it out; its outcome is not wanted (our own cancellation still is)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a failure of an unwanted download is not an error


async def download_global(state: RunState, notice: GlobalModelNotice) -> Weights:
    """Stream the global model to disk and load it; a checksum mismatch is retried once."""
    attempts = state.cfg.download_attempts
    path = state.workdir / f"global-{notice.version:08d}.safetensors"
    for attempt in range(1, attempts + 1):
        try:
            with state.progress.bar(f"download v{notice.version}", notice.size_bytes) as advance:
                await state.ports.download(notice.s3_key, notice.sha256, path, advance)
            break
        except CorruptDownloadError as exc:
            log.warning("client.download_checksum_mismatch", attempt=attempt, error=exc.message)
            if attempt == attempts:
                what = (
                    "was missing from the bucket"
                    if exc.actual == MISSING
                    else "failed SHA-256 verification"
                )
                raise CorruptDownloadError(
                    f"global model v{notice.version} of task {notice.task_name!r} "
                    f"({notice.s3_key!r}) {what} {attempts} times: "
                    f"{exc.message}. The object in S3 is not the one the server announced; "
                    "the notice is left on the queue and nothing was trained",
                    key=exc.key,
                    expected=exc.expected,
                    actual=exc.actual,
                ) from exc
            await asyncio.sleep(_RETRY_DELAY_S * attempt)
    try:
        return await asyncio.to_thread(
            codec.read_file,
            path,
            max_bytes=state.cfg.max_model_bytes,
            who=f"global model v{notice.version}",
        )
    finally:
        path.unlink(missing_ok=True)


async def train(
    state: RunState, weights: Weights, notice: GlobalModelNotice
) -> tuple[Weights, int, dict[str, float]]:
    """One `fit` per epoch in a worker thread: progress per epoch, and a stop request
    takes effect at the next epoch boundary instead of after the whole run.

    With held-out data, the global model it was given is scored on it first: `eval_*`
    metrics, what the server's `target_metric` reads (the silo's view of the model)."""
    cfg, data, version = state.cfg, state.data, notice.version
    seed = training_seed(cfg.seed, cfg.client_id, version, notice.seq)
    num_examples, metrics, scores = len(data), {}, {}
    # data that cannot fit the task's model stops the run here: nothing trained or sent
    await state.in_compute(check_data_fits, state.trainer, weights, data, cfg.task_name)
    # FedProx: every epoch is pulled towards this round's global model (refused, before
    # any training, by a trainer that cannot apply the term); mu 0: today's call exactly
    mu = float(getattr(notice, "proximal_mu", 0.0) or 0.0)
    fit = partial(state.trainer.fit, **proximal_keywords(state.trainer, mu, weights, cfg.task_name))
    if state.eval_data is not None:
        scores = await call_trainer(
            state, state.trainer.evaluate, weights, state.eval_data.x, state.eval_data.y
        )
    with state.progress.bar(f"train v{version}", cfg.epochs, "epochs") as advance:
        for epoch in range(cfg.epochs):
            result = await call_trainer(
                state, fit, weights, data.x, data.y, epochs=1, seed=seed + epoch
            )
            weights, num_examples, metrics = result.weights, result.num_examples, result.metrics
            advance(1)
    metrics = finite_metrics({**metrics, **{EVAL_PREFIX + k: v for k, v in scores.items()}})
    log.info("client.trained", epochs=cfg.epochs, num_examples=num_examples, **metrics)
    return weights, num_examples, metrics


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a record can carry: a NaN/Inf (or non-number) one is dropped with a
    warning, and the update is still submitted; the server judges the weights."""
    kept: dict[str, float] = {}
    for name, value in metrics.items():
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            log.warning(
                "client.metric_dropped", metric=name, value=repr(value), reason="non_finite"
            )
            continue
        kept[name] = number
    return kept


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


async def uploader_loop(state: RunState) -> None:
    while True:
        item = await state.uploads.get()
        if isinstance(item, EndOfRun):
            state.report.final_notice = item.held.notice
            await state.ports.delete(state.inbox.finish(item.held))
            log.info("client.task_ended", final_version=item.held.version)
            state.finished.set()
            return
        with bound_contextvars(version=item.held.version, round_id=item.record.round_id):
            await upload(state, item)


async def upload(state: RunState, item: PendingUpload) -> None:
    record = item.record
    state.phases["uploader"] = "uploading"
    try:
        with state.progress.bar(f"upload v{record.base_version}", record.size_bytes) as advance:
            await state.ports.upload(item.path, record.s3_key, record.sha256, advance)
        created = await state.ports.put_update(record)
    finally:
        state.phases.pop("uploader", None)
    # the record is written: the update is safe and counts, even if a stop lands before
    # the message is deleted (a redelivery then finds the record and only deletes it)
    if created:
        state.report.updates.append(record)
        log.info(
            "client.update_uploaded",
            update_id=record.update_id,
            s3_key=record.s3_key,
            size_bytes=record.size_bytes,
            num_examples=record.num_examples,
        )
    else:
        state.report.already_recorded += 1
        log.info("client.update_already_recorded", update_id=record.update_id)
    # only now may the message go
    await state.ports.delete(state.inbox.finish(item.held))
    with contextlib.suppress(FileNotFoundError):
        item.path.unlink()
