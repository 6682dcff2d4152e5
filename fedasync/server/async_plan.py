"""Async mode's one decision path, its pure part: (facts, a batch of 1..n submissions) -> a plan.

The facts are what one invocation read (`async_head.load_facts`: the TASK item as a view,
the head's models, each submission's record, object and base model, or the error that
reading it raised). `plan` decides every submission of the batch in stream order against
the head as the batch advances it: accepted (with its seq, weight and the version it
made) or rejected with its reason; a rejection is a verdict like any other and the batch
goes on. It stops only after an update that meets a stop condition (the rest is the next
batch's, against the finished task). No I/O, no clock: `async_task` commits the plan
once, conditionally on the head as read, then performs its effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedasync.core import codec, keys
from fedasync.core.asyncagg import Absorbed, absorb, after_refusal, stop_reason
from fedasync.core.decisions import check_running, describe, load_payload
from fedasync.core.errors import FedAsyncError, GlobalRefusedError
from fedasync.core.items import task as t
from fedasync.core.items import verdict as v
from fedasync.core.items.verdict import Verdict
from fedasync.core.messages import UpdateRecord
from fedasync.core.optimizers import state_to_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.screening import base_needed, next_window, screen
from fedasync.core.target import target_value, with_report
from fedasync.core.verdicts import decided_on, decided_on_record
from fedasync.server.async_head import Facts, Head, Submission, dp_values
from fedasync.server.task_view import TaskView


@dataclass
class Decided:
    sub: Submission
    verdict: dict[str, Any]  # as the ledger records it (without what it was decided on)
    out: Absorbed | None = None
    exc: FedAsyncError | None = None

    @property
    def accepted(self) -> bool:
        return Verdict.from_item(self.verdict).accepted

    def written(self) -> dict[str, Any]:
        """The verdict item's attributes: the verdict and the submission it decides."""
        sub = self.sub
        if self.accepted and sub.record is not None:
            return {**self.verdict, **decided_on_record(sub.record, None)}
        return {**self.verdict, **decided_on(sub.item)}


@dataclass(frozen=True)
class Write:
    key: str
    blob: bytes
    sha: str
    version: int | None = None  # a global version (write-once under central DP)


@dataclass
class Plan:
    head: Head
    decided: list[Decided] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    # the refusal whose dropped buffer holds updates committed before this batch
    drops_committed: GlobalRefusedError | None = None
    # the roster silos owed a go-ahead after the batch (`waiting`), and as of its last accept
    waiting: set[str] = field(default_factory=set)
    waiting_at_accept: frozenset[str] = frozenset()
    _buffer_sks: list[Decided] = field(default_factory=list)
    _committed_buffer: bool = True

    @property
    def accepted(self) -> list[Decided]:
        return [d for d in self.decided if d.accepted]


def plan(facts: Facts) -> Plan:
    view = facts.view
    head = Head.of(view)
    head.global_w, head.server_state = facts.global_w, facts.server_state
    head.buffer_sum = facts.buffer_sum if view.state.buffered else None
    out = Plan(head, waiting=set(view.waiting), _committed_buffer=view.state.buffered > 0)
    for sub in facts.batch:
        try:
            absorbed, norm = _absorb_one(facts, head, sub)
        except GlobalRefusedError as exc:
            _refuse(out, sub, exc, facts.now)
            continue
        except FedAsyncError as exc:
            _reject(out, sub, exc, facts.now)
            continue
        _advance(facts, out, sub, absorbed, norm)
        metric = target_value(view.cfg, head.latest)
        limit = view.dp_release_limit
        if stop_reason(head.state, view.cfg, metric=metric, release_limit=limit) is not None:
            break
    _buffer_write(out)
    return out


def _absorb_one(facts: Facts, head: Head, sub: Submission) -> tuple[Absorbed, float | None]:
    """Validate and screen one update against the head and absorb it; the outcome and the
    delta norm the outlier filter judged (None without one)."""
    if sub.error is not None:
        raise sub.error
    record, data = sub.record, sub.data
    assert record is not None
    assert data is not None
    assert head.global_w is not None
    view, who = head.view, describe(record)
    cfg = view.cfg
    check_running(view.status, view.finished, record)
    base_w = None
    if base_needed(cfg) and record.base_version <= head.state.version:
        base_w = head.produced.get(record.base_version, sub.base)
    staleness = head.state.version - record.base_version
    if staleness > cfg.max_staleness or staleness < 0:
        base_w = None  # absorb() rejects it with the precise reason; skip the heavy checks
    client_w = load_payload(
        data, record, view.spec, cfg,
        base=base_w if cfg.max_update_norm or cfg.update_encoding else None,
    )  # fmt: skip
    screened = screen(client_w, base_w, cfg, head.recent_norms, who)
    absorbed = absorb(
        head.state,
        cfg,
        base_version=record.base_version,
        global_w=head.global_w,
        client_w=screened.weights,
        base_w=base_w,
        buffer_sum=head.buffer_sum if head.state.buffered else None,
        server_state=head.server_state if cfg.server_optimizer is not None else None,
        noise=facts.noise(),
        who=who,
        client_id=record.client_id,
    )
    return absorbed, screened.norm


def _advance(facts: Facts, plan_: Plan, sub: Submission, out: Absorbed, norm: float | None) -> None:
    """The head after an accepted update; its verdict and the objects it produced."""
    head, record = plan_.head, sub.record
    assert record is not None
    name, cfg = head.view.task_name, head.view.cfg
    verdict = v.accepted(
        seq=out.state.absorbed,
        staleness=out.staleness,
        weight=out.weight,
        applied_version=out.state.version,
        decided_at=facts.now,
    )
    if out.new_global is not None:
        version = out.state.version
        produced = facts.releases.get(version, out.new_global)
        blob = codec.encode(produced)
        sha = codec.sha256_bytes(blob)
        plan_.writes.append(Write(keys.global_key(name, version), blob, sha, version))
        head.values.update(t.head_model(sha, len(blob)))
        verdict.update(v.produced(version_sha256=sha))  # the ledger's record of the version
        head.fresh.append((sha, produced))
        head.produced[version], head.produced_sha[version] = produced, sha
        head.global_w, head.head_sha, head.buffer_sum = produced, sha, None
        plan_._buffer_sks, plan_._committed_buffer = [], False
    if out.server_state is not None:
        tensors = state_to_tensors(out.server_state)
        blob = codec.encode(tensors)
        opt_sha = codec.sha256_bytes(blob)
        plan_.writes.append(Write(keys.optimizer_key(name, out.state.version), blob, opt_sha))
        head.fresh.append((opt_sha, tensors))
        head.server_state = out.server_state
        head.values.update(t.optimizer(opt_sha))
        verdict.update(v.produced(optimizer_sha256=opt_sha))
    if out.buffer_sum is not None:
        # written once, at the commit: only the committed seq's buffer is ever read
        head.buffer_sum = {k: np.asarray(v, dtype=np.float64) for k, v in out.buffer_sum.items()}
        head.buffer_sha = None
    reports = with_report(cfg, head.latest, record.client_id, record.metrics, record.num_examples)
    if reports is not None:
        head.latest = reports
        head.values.update(t.latest_metrics({c: r.item() for c, r in reports.items()}))
    if cfg.outlier_filter is not None:
        head.recent_norms = next_window(head.recent_norms, norm, cfg)
        head.values.update(t.recent_norms(head.recent_norms))
    head.values.update(dp_values(head, head.state, out, record.client_id))
    head.state = out.state
    state = out.state
    head.values.update(
        t.counters(state.absorbed, state.buffered, state.buffer_weight, state.version)
    )
    decided = Decided(sub, verdict, out=out)
    plan_.decided.append(decided)
    if out.state.buffered:
        plan_._buffer_sks.append(decided)
    plan_.waiting.discard(record.client_id)  # accepted: no longer owed a go-ahead
    plan_.waiting_at_accept = frozenset(plan_.waiting)


def _reject(plan_: Plan, sub: Submission, exc: FedAsyncError, now: float) -> None:
    view = plan_.head.view
    detail = detail_of(exc, view.task_name, sub.sk, sub.item, sub.record)[:2000]
    verdict = v.rejected(exc.reason, detail, now, attributed=exc.attributed)
    plan_.decided.append(Decided(sub, verdict, exc=exc))
    _owed(plan_, sub)


def _refuse(plan_: Plan, sub: Submission, exc: GlobalRefusedError, now: float) -> None:
    """The new global model the update made was refused (`refused.py`): the update is
    rejected with the cause, the head stays and a FedBuff buffer is dropped."""
    head = plan_.head
    dropped = plan_._buffer_sks if exc.discarded else []
    for member in dropped:
        member.verdict.update(v.discarded(exc.reason, exc.message[:2000]))
    if exc.discarded and plan_._committed_buffer:
        plan_.drops_committed = exc
    head.state = after_refusal(head.state)
    head.buffer_sum, head.buffer_sha = None, head.view.buffer_sha256
    head.values.update(t.buffer_dropped(), **_dp_buffer(head.view))
    sks = [sub.sk, *(d.sub.sk for d in dropped)]
    head.values.update(t.refusal(exc.reason, exc.message[:2000], head.state.version, sks, now))
    verdict = v.rejected(exc.reason, exc.message[:2000], now)
    plan_.decided.append(Decided(sub, verdict, exc=exc))
    plan_._buffer_sks, plan_._committed_buffer = [], False
    _owed(plan_, sub)


def _owed(plan_: Plan, sub: Submission) -> None:
    """A roster silo whose update was rejected is owed a go-ahead (`after_reject`)."""
    view, client = plan_.head.view, Verdict.from_item(sub.item).client_id
    if not view.finished and isinstance(client, str) and client in view.cfg.clients:
        plan_.waiting.add(client)


def _dp_buffer(view: TaskView) -> dict[str, Any]:
    """Central DP with FedBuff: the dropped buffer's silos and weight go with it."""
    if not central_dp(view.cfg):
        return {}
    return t.dp_buffer([], 0.0)


def _buffer_write(plan_: Plan) -> None:
    """The FedBuff buffer as the batch leaves it, one object per committed seq."""
    head = plan_.head
    if head.state.buffered and head.buffer_sha is None and head.buffer_sum is not None:
        blob = codec.encode(head.buffer_sum)
        head.buffer_sha = codec.sha256_bytes(blob)
        key = keys.buffer_key(head.view.task_name, head.state.absorbed)
        plan_.writes.append(Write(key, blob, head.buffer_sha))
        head.values.update(t.buffer_object(head.buffer_sha))
        head.fresh.append((head.buffer_sha, head.buffer_sum))


def detail_of(
    exc: FedAsyncError, task_name: str, sk: str, item: dict[str, Any], record: UpdateRecord | None
) -> str:
    """The error's message, prefixed with whose update it was when the message does not say:
    errors raised below the decisions (S3 reads, item parsing) may not name the client."""
    client = Verdict.from_item(item).client_id
    if f"task {task_name!r}" in exc.message and (
        not isinstance(client, str) or repr(client) in exc.message
    ):
        return exc.message
    who = (
        describe(record)
        if record is not None
        else f"update item {sk!r} from client {client!r} for task {task_name!r}"
    )
    return f"{who}: {exc.message}"
