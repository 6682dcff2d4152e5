"""A SecAgg round's objects as the server reads and writes them (`fedasync.core.secagg.notice`
says where each lives): the silos' answers, the phases' public inputs, each silo's inbox,
and what the server decided (each phase's closed set, written once)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from fedasync.core import codec, keys
from fedasync.core.errors import PayloadTooLargeError, RegistryError, SchemaError
from fedasync.core.secagg import crypto
from fedasync.core.secagg.notice import Phase, SecAggNotice, answer_key, server_key
from fedasync.core.secagg.quantize import Quantizer, RingVector
from fedasync.server.store import ServerStore
from fedasync.server.task_view import TaskView

log = structlog.get_logger()
# the largest answer: a masked input (safetensors: 4 bytes a coordinate at b <= 32, 8
# above), plus its header; or the keys, shares and signatures of the other phases
ANSWER_OVERHEAD = 1 << 20
READS_IN_FLIGHT = 4  # answers read at once (a masked input is ~4 MB)


@dataclass(frozen=True)
class RoundSetup:
    """What every phase of one round is bound to, from the task's config."""

    ctx: crypto.RoundContext
    quantizer: Quantizer
    identities: dict[str, bytes]
    silos: tuple[str, ...]


def setup(view: TaskView, round_id: int, graph_seed: bytes) -> RoundSetup:
    sa = view.cfg.secure_aggregation
    if sa is None:
        raise ValueError(f"task {view.task_name!r} has no secure_aggregation")
    silos = view.cfg.clients
    ctx = crypto.RoundContext(
        view.task_name,
        round_id,
        threshold=sa.quorum(len(silos)),
        degree=sa.neighbours,
        graph_seed=graph_seed if sa.neighbours is not None else b"",
    )
    identities = {c: base64.b64decode(k) for c, k in sa.identities.items()}
    return RoundSetup(ctx, Quantizer(sa.clip, len(silos), sa.ring_bits), identities, silos)


def notice(view: TaskView, s: RoundSetup, phase: Phase, expected: list[str]) -> SecAggNotice:
    return SecAggNotice(
        task_name=view.task_name,
        round_id=s.ctx.round_id,
        phase=phase,
        s3_key=keys.global_key(view.task_name, s.ctx.round_id),
        sha256=view.head_sha256,
        threshold=s.ctx.threshold,
        clip=s.quantizer.clip,
        ring_bits=s.quantizer.ring_bits,
        max_silos=s.quantizer.max_silos,
        degree=s.ctx.degree,
        graph_seed=s.ctx.graph_seed.hex(),
        expected=tuple(sorted(expected)),
        incarnation=view.incarnation,
        proximal_mu=view.cfg.proximal_mu,
        privacy=view.cfg.privacy,
    )


def input_length(view: TaskView) -> int:
    """A silo's input: every coordinate of the model's delta, and its example count."""
    return sum(math.prod(t.shape) for t in view.spec) + 1


def max_answer_bytes(view: TaskView, s: RoundSetup) -> int:
    coords = input_length(view)
    return ANSWER_OVERHEAD + coords * 8 + 64 * len(s.silos) * 1024


async def read_answers(
    store: ServerStore, view: TaskView, s: RoundSetup, phase: Phase, expected: list[str]
) -> dict[str, tuple[bytes, Any]]:
    """Each expected silo's answer to `phase` that is there: (raw bytes, parsed JSON); an
    answer that is not JSON is kept as None (its silo is named when the phase closes). A
    masked input is binary (`masked_wire`): its raw bytes, parsed at the close, and None."""
    limit, reads = max_answer_bytes(view, s), asyncio.Semaphore(READS_IN_FLIGHT)

    async def one(client_id: str) -> tuple[bytes, Any] | None:
        key = answer_key(view.task_name, s.ctx.round_id, phase, client_id)
        try:
            async with reads:
                raw = await store.get_object(key, limit)
        except RegistryError:
            return None  # not answered (yet)
        except PayloadTooLargeError:
            return (b"", None)
        if phase == "masked_input":
            return (raw, None)  # one GET; the close views its words in place
        try:
            return (raw, json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return (raw, None)

    ids = sorted(expected)
    got = await asyncio.gather(*(one(c) for c in ids))
    return {c: answer for c, answer in zip(ids, got, strict=True) if answer is not None}


async def answered(
    store: ServerStore, view: TaskView, s: RoundSetup, phase: Phase, expected: list[str]
) -> set[str]:
    """Which expected silos' answers to `phase` are there: a one-byte ranged GET each, so
    a phase that waits for a few more masked inputs does not re-read megabytes of them."""
    there: set[str] = set()
    for client_id in sorted(expected):
        key = answer_key(view.task_name, s.ctx.round_id, phase, client_id)
        try:
            await (await store.objects.ranged(key)).read(0, 1)
        except RegistryError:
            continue  # not answered yet
        except SchemaError:
            pass  # an empty answer is there: read, and refused, at the close
        there.add(client_id)
    return there


def ring_bytes(total: RingVector) -> bytes:
    """A ring vector as its little-endian words (the masked sum the server keeps)."""
    return total.astype(total.dtype.newbyteorder("<"), copy=False).tobytes()


def ring_vector(raw: bytes, quantizer: Quantizer) -> RingVector:
    dtype = np.dtype(quantizer.dtype).newbyteorder("<")
    out: RingVector = np.frombuffer(raw, dtype=dtype).astype(quantizer.dtype)
    return out


async def put_masked_sum(
    store: ServerStore, task_name: str, s: RoundSetup, total: RingVector
) -> str:
    """Store U3's masked sum under a key named by its SHA-256 (each try its own object: the
    phase's decision, written once, names the one that goes with its U3); its SHA-256."""
    blob = ring_bytes(total)
    sha = codec.sha256_bytes(blob)
    await store.put_object(masked_sum_key(task_name, s.ctx.round_id, sha), blob, sha)
    return sha


async def get_masked_sum(
    store: ServerStore, task_name: str, s: RoundSetup, sha: str
) -> RingVector | None:
    """The masked sum the masked-input phase decided on, or None if it is not intact."""
    try:
        raw = await store.get_object(masked_sum_key(task_name, s.ctx.round_id, sha))
    except RegistryError:
        return None
    return ring_vector(raw, s.quantizer) if codec.sha256_bytes(raw) == sha else None


def masked_sum_key(task_name: str, round_id: int, sha: str) -> str:
    return server_key(task_name, round_id, f"masked-sum-{sha}").replace(".json", ".bin")


async def put_json(store: ServerStore, key: str, value: Mapping[str, Any]) -> None:
    blob = json.dumps(value, sort_keys=True).encode()
    await store.put_object(key, blob, codec.sha256_bytes(blob))


async def put_json_once(store: ServerStore, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """Write unless written: what is there (a retry's decision is the first one's)."""
    blob = json.dumps(value, sort_keys=True).encode()
    stored, _ = await store.put_object_once(key, blob, codec.sha256_bytes(blob))
    got: dict[str, Any] = json.loads(stored)
    return got


async def get_decision(store: ServerStore, task_name: str, round_id: int, name: str) -> Any:
    """A decision of the round's (`server_key`), or None when it is not taken yet."""
    try:
        return json.loads(await store.get_object(server_key(task_name, round_id, name)))
    except RegistryError:
        return None
