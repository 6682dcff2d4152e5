"""A silo's side of secure aggregation: one session per round, answering each phase.

The server publishes a `SecAggNotice` when a phase opens; the silo reads the phase's
inputs from S3 (the adverts, its inbox of sealed shares, U3, the survivors' signatures:
`fedasync.core.secagg.notice`), asks its `SiloSession` for the answer and writes it under
its own prefix. The session's secrets (its X25519 keys, its self-mask seed, the shares it
holds) never leave this process and are never logged: only event names, phases and
reasons are. A notice delivered twice gets the very same answer bytes again; a session
lost with the process (a restart mid-round) is not rebuilt: the silo counts as dropped
from that phase on, which the protocol survives. The session is dropped once the silo has
revealed its shares (the unmask phase), and never persisted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import structlog
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedasync.aws.session import AwsContext
from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.privacy import PrivacyConfig
from fedasync.core.secagg import wire
from fedasync.core.secagg.central_dp import central_input
from fedasync.core.secagg.crypto import RoundContext
from fedasync.core.secagg.errors import SecAggError
from fedasync.core.secagg.masked_wire import CONTENT_TYPE, encode_masked
from fedasync.core.secagg.messages import EncryptedShares, KeyAdvert, SurvivorSignature
from fedasync.core.secagg.notice import Phase, SecAggNotice, answer_key, inbox_key, public_key
from fedasync.core.secagg.quantize import Quantizer
from fedasync.core.secagg.silo import SiloSession

log = structlog.get_logger()
# (the round's global model) -> (the local model trained from it, its example count);
# with local DP (the notice's privacy), the local model is already clipped and noised
Train = Callable[[Weights], Awaitable[tuple[Weights, int]]]


def silo_input(
    global_w: Weights,
    local_w: Weights,
    examples: int,
    step: float,
    privacy: PrivacyConfig | None = None,
) -> np.ndarray:
    """x_u = (n_u · Δ_u flattened in the model's order, n_u · step): the count quantises
    to exactly n_u (fedasync/server/secagg_close.py takes the FedAvg step on the sum).
    Under central DP, (clip(Δ_u), step): equal weights, the delta clipped here, at the
    silo, since the server never sees it (`fedasync.core.secagg.central_dp`)."""
    central = privacy is not None and privacy.mode == "central"
    weight = 1 if central else examples
    parts = [
        (local_w[name].astype(np.float64) - tensor.astype(np.float64)).ravel() * weight
        for name, tensor in global_w.items()
    ]
    if privacy is not None and central:
        return central_input(np.concatenate(parts), privacy.clip_norm, step)
    return np.concatenate([*parts, np.array([examples * step])])


@dataclass
class _Round:
    session: SiloSession | None
    answers: dict[Phase, bytes] = field(default_factory=dict)


@dataclass
class SecAggSilo:
    """Answers one silo's SecAgg notices. `identities`: every silo's Ed25519 public key,
    registered out of band (as the task's config holds them), never taken from the server."""

    aws: AwsContext
    bucket: str
    client_id: str
    identity: Ed25519PrivateKey
    identities: Mapping[str, bytes]
    train: Train
    rounds: dict[tuple[str, int], _Round] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SecAggSilo({self.client_id!r}, secrets not shown)"

    async def answer(self, notice: SecAggNotice) -> bool:
        """Answer the notice's phase (the same bytes again for a redelivered one); False
        when this silo cannot (a refusal, or its session is gone)."""
        where = (notice.task_name, notice.round_id)
        held = self.rounds.get(where)
        if held is not None and notice.phase in held.answers:
            await self._put(notice, held.answers[notice.phase])
            return True
        if held is None and notice.phase != "advertise_keys":
            log.warning("secagg.session_lost", phase=notice.phase, round_id=notice.round_id)
            return False
        if held is None:
            held = self.rounds[where] = _Round(self._session(notice))
        if held.session is None:
            return False
        try:
            body = await self._answer(notice, held.session)
        except SecAggError as exc:
            log.warning(
                "secagg.refused", phase=notice.phase, reason=exc.reason, culprit=exc.culprit
            )
            return False
        blob = body if isinstance(body, bytes) else json.dumps(body, sort_keys=True).encode()
        held.answers[notice.phase] = blob
        await self._put(notice, blob)
        if notice.phase == "unmask":
            held.session = None  # the secrets go with it
        log.info("secagg.answered", phase=notice.phase, round_id=notice.round_id)
        return True

    def _session(self, notice: SecAggNotice) -> SiloSession:
        ctx = RoundContext(
            notice.task_name,
            notice.round_id,
            threshold=notice.threshold,
            degree=notice.degree,
            graph_seed=bytes.fromhex(notice.graph_seed),
        )
        quantizer = Quantizer(notice.clip, notice.max_silos, notice.ring_bits)
        return SiloSession(self.client_id, self.identity, ctx, quantizer)

    async def _answer(self, notice: SecAggNotice, session: SiloSession) -> dict[str, Any] | bytes:
        name, r = notice.task_name, notice.round_id
        if notice.phase == "advertise_keys":
            return wire.encode(session.advertise())
        if notice.phase == "share_keys":
            public = await self._json(public_key(name, r, "share_keys"))
            adverts = [_as(wire.decode(a), KeyAdvert) for a in public["adverts"]]
            sealed = await asyncio.to_thread(session.share_keys, adverts, self.identities)
            return {"messages": [wire.encode(m) for m in sealed]}
        if notice.phase == "masked_input":
            inbox = await self._json(inbox_key(name, r, self.client_id))
            messages = [_as(wire.decode(m), EncryptedShares) for m in inbox["messages"]]
            global_w = codec.decode(await self._get(notice.s3_key), who=notice.s3_key)
            if codec.sha256_bytes(codec.encode(global_w)) != notice.sha256:
                log.warning("secagg.global_changed", round_id=r)
            local_w, examples = await self.train(global_w)
            x = silo_input(global_w, local_w, examples, session.quantizer.step, notice.privacy)
            masked = await asyncio.to_thread(session.masked_input, messages, x)
            return encode_masked(masked)  # safetensors: the words as they are
        if notice.phase == "consistency":
            public = await self._json(public_key(name, r, "consistency"))
            return wire.encode(session.consistency(public["members"]))
        public = await self._json(public_key(name, r, "unmask"))
        sigs = [_as(wire.decode(s), SurvivorSignature) for s in public["signatures"]]
        return wire.encode(session.unmask(sigs, self.identities))

    async def _get(self, key: str) -> bytes:
        s3 = await self.aws.s3()
        resp = await s3.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            return bytes(await body.read())

    async def _json(self, key: str) -> dict[str, Any]:
        try:
            got = json.loads(await self._get(key))
        except (ClientError, json.JSONDecodeError) as exc:
            raise SecAggError(
                f"phase input {key!r} is unreadable", reason="secagg_protocol"
            ) from exc
        if not isinstance(got, dict):
            raise SecAggError(f"phase input {key!r} is not an object", reason="secagg_protocol")
        return got

    async def _put(self, notice: SecAggNotice, blob: bytes) -> None:
        s3 = await self.aws.s3()
        key = answer_key(notice.task_name, notice.round_id, notice.phase, self.client_id)
        kind = CONTENT_TYPE if notice.phase == "masked_input" else "application/json"
        await s3.put_object(Bucket=self.bucket, Key=key, Body=blob, ContentType=kind)


T = TypeVar("T")


def _as(message: object, cls: type[T]) -> T:
    if not isinstance(message, cls):
        raise SecAggError(f"expected a {cls.__name__}", reason="secagg_protocol")
    return message


__all__ = ["SecAggSilo", "silo_input"]
