"""Rebuild every global version of a task from its ledger, through the server's own code.

Pure: the caller passes `load(s3_key) -> bytes` (a folder, a bucket, a dict). The replay
checks each object against the SHA-256 the ledger recorded, re-validates every accepted
update exactly as the aggregator did (`load_payload`), recomputes each version with the
same aggregation code (streaming FedAvg for sync rounds, `asyncagg.absorb` in `seq` order
for FedAsync/FedBuff, the FedBuff buffer round-tripped through the codec as the server
stores it) and compares the bytes' SHA-256 with the recorded one. The screening of each
update (`fedasync.core.screening`: `clip_update_norm`, and the async outlier filter's
window of accepted delta norms, rebuilt in `seq` order) is re-derived the same way; an
accepted update the filter would have rejected is a problem. Ledger lines may come
duplicated or in any order: events are keyed, rounds are taken by id, updates by `seq`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedasync.core import codec
from fedasync.core.asyncagg import AsyncState, absorb, after_refusal
from fedasync.core.codec import ModelSpec, TensorSpec, Weights
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import describe, load_payload
from fedasync.core.errors import InvalidWeightsError, SchemaError
from fedasync.core.items.ledger import KIND, Entry
from fedasync.core.keys import global_key
from fedasync.core.messages import UpdateRecord
from fedasync.core.optimizers import OptimizerState, state_to_tensors
from fedasync.core.privacy import central_dp
from fedasync.core.replay_checks import head_problems
from fedasync.core.replay_dp import fetch, recorded_release
from fedasync.core.replay_secagg import secagg_round
from fedasync.core.screening import base_needed, clip_to_base, next_window, screen
from fedasync.core.strategies import sync_strategy

Loader = Callable[[str], bytes]
Event = Mapping[str, Any]


@dataclass(frozen=True)
class VersionCheck:
    version: int
    recorded: str | None
    rebuilt: str

    @property
    def ok(self) -> bool:
        return self.recorded == self.rebuilt


@dataclass
class ReplayResult:
    task_name: str
    mode: str
    strategy: str
    checks: list[VersionCheck] = field(default_factory=list)
    final_version: int | None = None
    final_recorded: str | None = None
    final_sha256: str | None = None
    applied: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        final_ok = self.final_recorded is None or self.final_recorded == self.final_sha256
        return final_ok and not self.problems and all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> list[VersionCheck]:
        return [c for c in self.checks if not c.ok]


def _spec(raw: Iterable[Any]) -> ModelSpec:
    return tuple(TensorSpec(str(n), tuple(int(d) for d in s), str(dt)) for n, s, dt in raw)


def _record(update: Entry) -> UpdateRecord:
    if update.record is None:
        raise SchemaError(f"update entry {update.key!r} carries no record")
    return UpdateRecord.parse(dict(update.record))


def replay(events: Iterable[Event], load: Loader) -> ReplayResult:
    """Rebuild every version the ledger recorded; see `ReplayResult.ok`."""
    by_kind: dict[str, list[tuple[Event, Entry]]] = {}  # a SecAgg round's reader takes its line
    for event in events:
        if (entry := Entry.from_event(event)).kind is None:
            raise SchemaError(f"a ledger line has no {KIND!r}: {list(event)[:10]}")
        by_kind.setdefault(entry.kind, []).append((event, entry))
    tasks = [e for _, e in by_kind.get("task", [])]
    if len(tasks) != 1:
        raise SchemaError(f"a ledger holds exactly one task event; found {len(tasks)}")
    task = tasks[0]
    cfg = TaskConfig.model_validate(task.config)
    spec = _spec(task.spec)
    initial = task.initial
    if initial is None:
        raise SchemaError(f"the task event of {task.task_name!r} names no initial model")
    blob0 = fetch(load, str(initial["s3_key"]), initial.get("sha256"), "initial model")
    versions: dict[int, bytes] = {0: blob0}
    result = ReplayResult(cfg.task_name, cfg.mode, cfg.aggregation)
    recorded = {int(e.version): str(e.sha256) for _, e in by_kind.get("version", [])}
    updates = [e for _, e in by_kind.get("update", [])]
    if cfg.mode == "sync":
        _replay_sync(
            cfg,
            spec,
            rounds=by_kind.get("round", []),
            updates=updates,
            load=load,
            versions=versions,
            result=result,
        )
    else:
        _replay_async(cfg, spec, updates=updates, load=load, versions=versions, result=result)
    for version in sorted(versions):
        if version == 0:
            continue
        rebuilt = codec.sha256_bytes(versions[version])
        result.checks.append(VersionCheck(version, recorded.get(version), rebuilt))
    for version in sorted(set(recorded) - set(versions)):
        result.problems.append(f"version {version} is recorded but was not rebuilt")
    finals = [e for _, e in by_kind.get("final", [])]
    last = max(versions)
    if finals:
        final = finals[0]
        last = int(final.version) if final.version is not None else last
        result.final_recorded = final.sha256
    result.final_version = last
    if last in versions:
        result.final_sha256 = codec.sha256_bytes(versions[last])
    else:
        result.problems.append(f"the final version {last} was not rebuilt")
    result.problems += head_problems(task.head, versions)
    return result


def _replay_sync(
    cfg: TaskConfig,
    spec: ModelSpec,
    *,
    rounds: list[tuple[Event, Entry]],
    updates: list[Entry],
    load: Loader,
    versions: dict[int, bytes],
    result: ReplayResult,
) -> None:
    by_sk = {u.sk: u for u in updates if u.sk is not None}
    state: OptimizerState | None = None
    for event, said in sorted(rounds, key=lambda r: int(r[1].round_id)):
        round_id = int(said.round_id)
        if round_id not in versions:
            result.problems.append(f"round {round_id} starts from version {round_id}, not rebuilt")
            return
        if cfg.secure_aggregation is not None:  # rebuilt from its recorded sum
            stepped = secagg_round(
                cfg, event, codec.decode(versions[round_id]), load, result.problems
            )
            if stepped is None:
                return
            secagg = said.secagg if isinstance(said.secagg, Mapping) else {}
            result.applied += len(secagg.get("survivors", []))
            state = _server_step(cfg, said, versions, stepped, state=state, result=result)
            continue
        bound = cfg.clip_update_norm
        norm_base = cfg.max_update_norm is not None or bound is not None
        norm_base |= cfg.update_encoding is not None  # a delta reads as base + delta
        base = codec.decode(versions[round_id]) if norm_base else None
        acc = sync_strategy(cfg).fold(spec, who=f"round {round_id} of task {cfg.task_name!r}")
        for sk in said.members:
            update = by_sk.get(sk)
            if update is None:
                result.problems.append(
                    f"round {round_id} aggregated {sk!r}, missing from the ledger"
                )
                return
            record = _record(update)
            weights = load_payload(load(record.s3_key), record, spec, cfg, base=base)
            if bound is not None and base is not None:
                weights = clip_to_base(weights, base, bound)  # as the round's fold does
            acc.add(weights, record.num_examples, who=str(sk))
            result.applied += 1
        if central_dp(cfg):
            # a noised release: the recorded decision, read back and checked (the noise
            # is not in the ledger, so it cannot be recomputed; see docs/privacy.md)
            version = int(said.version)
            key = global_key(cfg.task_name, version)
            versions[version] = fetch(load, key, str(said.sha256), f"DP release {version}")
            continue
        state = _server_step(cfg, said, versions, acc.result(), state=state, result=result)


def _server_step(
    cfg: TaskConfig,
    event: Entry,
    versions: dict[int, bytes],
    new_global: Weights,
    *,
    state: OptimizerState | None,
    result: ReplayResult,
) -> OptimizerState | None:
    """The round's server optimizer step (if any) and its new version, as the server."""
    round_id = int(event.round_id)
    if cfg.server_optimizer is not None:
        new_global, state = cfg.server_optimizer.step(
            codec.decode(versions[round_id]), new_global, state
        )
        rebuilt = codec.sha256_bytes(codec.encode(state_to_tensors(state)))
        if event.optimizer_sha256 not in (None, rebuilt):
            result.problems.append(
                f"round {round_id}: the server optimizer state rebuilt has SHA-256 "
                f"{rebuilt}; the server recorded {event.optimizer_sha256}"
            )
    versions[int(event.version)] = codec.encode(new_global)
    return state


def _replay_async(
    cfg: TaskConfig,
    spec: ModelSpec,
    *,
    updates: list[Entry],
    load: Loader,
    versions: dict[int, bytes],
    result: ReplayResult,
) -> None:
    accepted = sorted((u for u in updates if u.accepted), key=_seq_of)
    seqs = [_seq_of(u) for u in accepted]
    if seqs != list(range(1, len(seqs) + 1)):
        result.problems.append(f"accepted updates' seq are not 1..{len(seqs)}: {seqs[:20]}")
        return
    state = AsyncState()
    buffer: Weights | None = None
    server_state: OptimizerState | None = None
    needs_base = base_needed(cfg)
    recent: tuple[float, ...] = ()  # the outlier filter's window, rebuilt in seq order
    for update in accepted:
        record = _record(update)
        who = describe(record)
        base_w = codec.decode(versions[record.base_version]) if needs_base else None
        client_w = load_payload(
            load(record.s3_key), record, spec, cfg,
            base=base_w if cfg.max_update_norm or cfg.update_encoding else None,
        )  # fmt: skip
        try:
            screened = screen(client_w, base_w, cfg, recent, who)
        except InvalidWeightsError as exc:  # the filter would have rejected what was accepted
            result.problems.append(f"accepted at seq {update.seq}, but {exc.message}")
            return
        recent = next_window(recent, screened.norm, cfg)
        if central_dp(cfg):  # each release a recorded version (fedasync.core.replay_dp)
            state = recorded_release(
                state, update, cfg=cfg, record=record, load=load, versions=versions, result=result
            )
            continue
        out = absorb(
            state,
            cfg,
            base_version=record.base_version,
            global_w=codec.decode(versions[state.version]),
            client_w=screened.weights,
            base_w=base_w,
            buffer_sum=buffer,
            server_state=server_state,
            who=who,
        )
        server_state = out.server_state or server_state
        for name, mine, theirs in (
            ("staleness", out.staleness, update.staleness),
            ("applied_version", out.state.version, update.applied_version),
        ):
            if theirs is not None and mine != int(theirs):
                result.problems.append(f"{who}: {name} {mine} on replay, {theirs} recorded")
        if update.discarded and out.state.buffered == cfg.buffer_size - 1:
            # the next update's step was refused with this buffer: the server dropped it
            out = replace(out, state=after_refusal(out.state), buffer_sum=None)
            buffer = None
        if out.new_global is not None:
            versions[out.state.version] = codec.encode(out.new_global)
        if out.buffer_sum is not None:
            # the server stores the buffer as float64 safetensors and reads it back
            stored = {k: np.asarray(v, dtype=np.float64) for k, v in out.buffer_sum.items()}
            buffer = codec.decode(codec.encode(stored))
        elif out.state.buffered == 0:
            buffer = None
        state = out.state
        result.applied += 1


def _seq_of(update: Entry) -> int:
    """An accepted update's position; a ledger without one is not the server's."""
    if update.seq is None:
        raise SchemaError(f"accepted update {update.key!r} has no seq")
    return update.seq
