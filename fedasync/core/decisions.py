"""The server's decisions, pure: what to do with an update, a round, a task.

The handlers fetch the facts (records, objects) and perform the effects; everything
that decides lives here so the same decision runs in Lambda, the embedded stack and
`replay`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedasync.core import codec
from fedasync.core.codec import Array, ModelSpec, Weights
from fedasync.core.config import TaskConfig
from fedasync.core.deltas import local_from_delta
from fedasync.core.errors import (
    ChecksumMismatchError,
    FedAsyncError,
    SchemaError,
    StaleUpdateError,
    TaskFinishedError,
    UnknownClientError,
)
from fedasync.core.messages import Heartbeat, UpdateRecord
from fedasync.core.verdicts import VERDICT_ATTRIBUTES

RECORD_FIELDS = frozenset(UpdateRecord.model_fields)


def describe(record: UpdateRecord) -> str:
    where = (
        f"round {record.round_id}"
        if record.round_id is not None
        else f"base version {record.base_version}"
    )
    return (
        f"update {record.update_id!r} from client {record.client_id!r} for task "
        f"{record.task_name!r} ({where})"
    )


def parse_update_item(item: Mapping[str, Any]) -> UpdateRecord:
    """The client-written part of an update item; server attributes or junk are refused."""
    fields = {k: v for k, v in item.items() if k not in ("task_name", "sk")}
    fields["task_name"] = item.get("task_name")
    forged = sorted(set(fields) & set(VERDICT_ATTRIBUTES))
    if "forged_attributes" in fields:  # what the inbox item held (verdicts.merge)
        forged = sorted(str(name) for name in fields["forged_attributes"])
    if forged:
        raise SchemaError(f"update item sets server-owned attribute(s) {forged}")
    record = UpdateRecord.parse(fields)
    if item.get("sk") != record.sk:
        raise SchemaError(
            f"{describe(record)} is stored under sort key {item.get('sk')!r}; expected {record.sk!r}"
        )
    return record


def check_sender(record: UpdateRecord, cfg: TaskConfig) -> None:
    """Known client, own prefix, right mode."""
    if record.client_id not in cfg.clients:
        raise UnknownClientError(
            f"{describe(record)}: client {record.client_id!r} is not one of the task's clients "
            f"{list(cfg.clients)}"
        )
    record.check_key()
    if cfg.mode == "sync" and record.round_id is None:
        raise SchemaError(f"{describe(record)}: task is sync; the update must name its round_id")
    if cfg.mode == "async" and record.round_id is not None:
        raise SchemaError(f"{describe(record)}: task is async; round_id must be absent")
    # the bound on num_examples is checked with the object (`load_payload`): a rejection
    # for it is then the client's own word (its verified bytes), which settles its slot


def check_examples(record: UpdateRecord, cfg: TaskConfig) -> None:
    """No more examples than the task allows (`max_num_examples`)."""
    if record.num_examples > cfg.max_num_examples:
        raise SchemaError(
            f"{describe(record)} claims {record.num_examples} examples; the task allows at "
            f"most {cfg.max_num_examples} (max_num_examples)",
            reason="too_many_examples",
        )


def check_round(record: UpdateRecord, head_version: int, round_closed: bool) -> None:
    """A sync update must be for the open round, trained from that round's global model."""
    if record.round_id is None:
        raise SchemaError(f"{describe(record)}: a sync update must name its round_id")
    if record.round_id < head_version or (record.round_id == head_version and round_closed):
        raise StaleUpdateError(
            f"{describe(record)} arrived after round {record.round_id} closed",
            reason="closed_round",
        )
    if record.round_id > head_version:
        raise SchemaError(
            f"{describe(record)} is for round {record.round_id}, which has not opened "
            f"(current round {head_version})",
            reason="future_round",
        )
    if record.base_version != record.round_id:
        raise SchemaError(
            f"{describe(record)} says base version {record.base_version}; round "
            f"{record.round_id} trains from version {record.round_id}"
        )


def check_running(status: str | None, finished: str | None, record: UpdateRecord) -> None:
    if finished or status in ("SUCCEEDED", "FAILED", "ABORTED"):
        raise TaskFinishedError(
            f"{describe(record)} arrived after the task finished ({finished or status})"
        )


def load_payload(
    data: bytes,
    record: UpdateRecord,
    spec: ModelSpec,
    cfg: TaskConfig,
    base: Mapping[str, Array] | None = None,
) -> Weights:
    """Checksum, size, format, names/shapes/dtypes, finiteness and norm of an update's object."""
    who = describe(record)
    digest = codec.sha256_bytes(data)
    if digest != record.sha256:
        raise ChecksumMismatchError(
            f"{who}: object {record.s3_key!r} has SHA-256 {digest}; the record says {record.sha256}"
        )
    try:
        check_examples(record, cfg)  # after the checksum: the claim comes with its bytes
        # read-only views on the bytes: nothing downstream changes an update in place
        weights = codec.decode(data, max_bytes=cfg.max_model_bytes, who=who, copy=False)
        if record.delta_dtype is not None or cfg.update_encoding is not None:  # base + delta
            weights = local_from_delta(
                data, weights, record, spec=spec, cfg=cfg, base=base, who=who
            )
        codec.validate(weights, spec, who, base=base, max_norm=cfg.max_update_norm)
    except FedAsyncError as exc:
        exc.attributed = True  # only the client can have put these bytes there
        raise
    return weights


@dataclass(frozen=True)
class RoundOutcome:
    """What closing a sync round decided: aggregate the members, or fail the task."""

    closed: bool
    arrived: int
    needed: int
    cause: str | None = None


def round_complete(cfg: TaskConfig, decided_clients: set[str]) -> bool:
    """Every expected client has its word in the round: an accepted update, or one
    rejected for what its own object holds (`verdicts.settles`)."""
    return set(cfg.clients) <= decided_clients


def lapsed(heartbeats: Mapping[str, Mapping[str, Any] | None], now: float) -> set[str]:
    """The clients whose heartbeat says they are gone: it expired (`expires_at` passed) or
    said `stopped`. A client with no heartbeat, or one that cannot be read, is not judged
    dead: only a silo's own word (or its silence after it spoke) drops it."""
    gone = set()
    for client_id, item in heartbeats.items():
        if item is None:
            continue
        try:
            beat = Heartbeat.parse({k: v for k, v in item.items() if k != "sk"})
        except SchemaError:
            continue
        if beat.client_id == client_id and (beat.status == "stopped" or not beat.alive_at(now)):
            gone.add(client_id)
    return gone


def droppable(cfg: TaskConfig, undecided: set[str], accepted: int, dead: set[str]) -> bool:
    """Close a round without its undecided clients: every one of them is dead, and the
    updates accepted already meet the quorum (else the round waits for its deadline)."""
    return bool(undecided) and undecided <= dead and accepted >= cfg.quorum and accepted > 0


def close_outcome(
    cfg: TaskConfig, round_id: int, accepted: int, *, at_deadline: bool
) -> RoundOutcome:
    if accepted >= cfg.quorum and accepted > 0:
        return RoundOutcome(True, accepted, cfg.quorum)
    when = "at its deadline" if at_deadline else "with every client decided"
    return RoundOutcome(
        False,
        accepted,
        cfg.quorum,
        cause=(
            f"round {round_id} of task {cfg.task_name!r} closed {when} with {accepted} accepted "
            f"update(s); {cfg.quorum} needed (min_clients)"
        ),
    )


def examples_outcome(
    cfg: TaskConfig, round_id: int, records: list[UpdateRecord]
) -> RoundOutcome | None:
    """None when FedAvg can weigh the members; else why the round cannot close: every
    accepted update reports 0 examples, and a weighted mean over a total of 0 has no value."""
    if not records or sum(r.num_examples for r in records) > 0:
        return None
    return RoundOutcome(
        False,
        len(records),
        cfg.quorum,
        cause=(
            f"round {round_id} of task {cfg.task_name!r} cannot be aggregated: its "
            f"{len(records)} accepted update(s) report 0 examples in total; FedAvg needs "
            "at least one example"
        ),
    )
