"""Each SecAgg phase's close, pure: the silos' answers in, the phase's verified set out.

A phase is closed from verified messages only (`fedasync.core.secagg`: `verify_adverts`,
`route_shares`, `masked_inputs`, `verify_survivor_signatures`). An answer that fails a
check (not JSON, another silo's name, a forged signature, shares to strangers) leaves
its silo out of the phase, named with the reason in `rejected`; the others go on. Fewer
than t left is the `SecAggError` `secagg_below_threshold` the caller fails the round with.
Decisions are JSON-ready dicts: the server stores them once (`secagg_io.put_json_once`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from fedasync.core import codec
from fedasync.core.secagg import relay, silo, wire
from fedasync.core.secagg.errors import BELOW_THRESHOLD, FORGED, PROTOCOL, SecAggError
from fedasync.core.secagg.masked_wire import decode_masked
from fedasync.core.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    SurvivorSignature,
    Unmasking,
)
from fedasync.core.secagg.quantize import RingVector, ring_sum
from fedasync.server.secagg_io import RoundSetup

log = structlog.get_logger()
Answers = Mapping[str, tuple[bytes, Any]]
M = TypeVar("M")
R = TypeVar("R")


def parse(owner: str, data: Any, cls: type[M], sender_of: Callable[[M], str]) -> M:
    """One message of silo `owner`'s answer, of kind `cls` and sent by `owner`."""
    if not isinstance(data, Mapping):
        raise SecAggError(
            f"silo {owner!r} answered with no message", reason=PROTOCOL, culprit=owner
        )
    try:
        message = wire.decode(data)
    except SecAggError as exc:
        raise SecAggError(exc.message, reason=exc.reason, culprit=owner) from None
    if not isinstance(message, cls):
        raise SecAggError(f"silo {owner!r} answered out of phase", reason=PROTOCOL, culprit=owner)
    if sender_of(message) != owner:
        raise SecAggError(
            f"the answer under silo {owner!r}'s prefix is signed as {sender_of(message)!r}",
            reason=FORGED,
            culprit=owner,
        )
    return message


def parsed_all(
    answers: Answers, parse_one: Callable[[str, Any], list[M]]
) -> tuple[dict[str, list[M]], dict[str, str]]:
    """Every answer parsed, and the silos whose answer did not parse (with why)."""
    good: dict[str, list[M]] = {}
    rejected: dict[str, str] = {}
    for owner, (_, data) in sorted(answers.items()):
        try:
            good[owner] = parse_one(owner, data)
        except SecAggError as exc:
            rejected[owner] = _reject(exc, owner)
    return good, rejected


def without_culprits(
    run: Callable[[list[M]], R], messages: dict[str, list[M]], rejected: dict[str, str]
) -> R:
    """run(all messages), dropping the silo a check blames until it passes; a failure
    nobody is blamed for (below threshold) is raised."""
    live = dict(messages)
    while True:
        try:
            return run([m for owner in sorted(live) for m in live[owner]])
        except SecAggError as exc:
            if exc.reason == BELOW_THRESHOLD or exc.culprit not in live:
                raise
            rejected[exc.culprit] = _reject(exc, exc.culprit)
            del live[exc.culprit]


def _reject(exc: SecAggError, owner: str) -> str:
    # the message names silos and checks, never bytes of a key, seed or share
    log.warning("secagg.rejected", reason=exc.reason, culprit=owner, detail=exc.message)
    return exc.reason


def advertise_keys(s: RoundSetup, answers: Answers) -> dict[str, Any]:
    adverts, rejected = parsed_all(
        answers, lambda o, d: [parse(o, d, KeyAdvert, lambda m: m.client_id)]
    )
    roster = without_culprits(
        lambda msgs: silo.verify_adverts(s.ctx, msgs, s.identities), adverts, rejected
    )
    return {
        "members": sorted(roster),
        "adverts": [wire.encode(roster[c]) for c in sorted(roster)],
        "rejected": rejected,
    }


def roster_of(decision: Mapping[str, Any]) -> dict[str, KeyAdvert]:
    adverts = [wire.decode(a) for a in decision["adverts"]]
    return {a.client_id: a for a in adverts if isinstance(a, KeyAdvert)}


def _shares_of(owner: str, data: Any) -> list[EncryptedShares]:
    items = data.get("messages") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise SecAggError(f"silo {owner!r} sent no share list", reason=PROTOCOL, culprit=owner)
    return [parse(owner, item, EncryptedShares, lambda m: m.sender) for item in items]


def share_keys(s: RoundSetup, answers: Answers, adverts: Mapping[str, Any]) -> dict[str, Any]:
    roster = roster_of(adverts)
    sealed, rejected = parsed_all(answers, _shares_of)
    u2, inboxes = without_culprits(
        lambda msgs: relay.route_shares(s.ctx, roster, msgs), sealed, rejected
    )
    return {
        "members": sorted(u2),
        "inboxes": {v: [wire.encode(m) for m in inboxes[v]] for v in sorted(inboxes)},
        "rejected": rejected,
    }


def masked_input(
    s: RoundSetup, answers: Answers, u2: Sequence[str], length: int
) -> tuple[dict[str, Any], RingVector]:
    """U3, and Σ_{u ∈ U3} y_u mod 2^b: the unmask phase needs only that sum (still masked
    by every b_u, and by the pair masks of the silos that dropped), not each input."""
    masked, rejected = parsed_all(
        {o: (raw, raw) for o, (raw, _) in answers.items()}, lambda o, d: [_masked_of(o, d)]
    )
    u3 = without_culprits(
        lambda msgs: relay.masked_inputs(
            s.ctx,
            frozenset(u2),
            messages=msgs,
            quantizer=s.quantizer,
            length=length,
            identities=s.identities,
        ),
        masked,
        rejected,
    )
    # the vectors stay in the silos' objects; the server keeps which bytes it accepted
    sha = {c: codec.sha256_bytes(answers[c][0]) for c in sorted(u3)}
    total = ring_sum([u3[c] for c in sorted(u3)], s.quantizer.mask)
    return {"members": sorted(u3), "sha256": sha, "rejected": rejected}, total


def _masked_of(owner: str, raw: bytes) -> MaskedInput:
    """Silo `owner`'s masked input (safetensors, `masked_wire`), sent as `owner`."""
    try:
        message = decode_masked(raw, f"silo {owner!r}'s masked input")
    except SecAggError as exc:
        raise SecAggError(exc.message, reason=exc.reason, culprit=owner) from None
    if message.client_id != owner:
        raise SecAggError(
            f"the answer under silo {owner!r}'s prefix is signed as {message.client_id!r}",
            reason=FORGED,
            culprit=owner,
        )
    return message


def consistency(s: RoundSetup, answers: Answers, u3: Sequence[str]) -> dict[str, Any]:
    sigs, rejected = parsed_all(
        answers, lambda o, d: [parse(o, d, SurvivorSignature, lambda m: m.client_id)]
    )
    good = without_culprits(
        lambda msgs: relay.verify_survivor_signatures(s.ctx, frozenset(u3), msgs, s.identities),
        sigs,
        rejected,
    )
    return {
        "members": sorted(m.client_id for m in good),
        "signatures": [wire.encode(m) for m in sorted(good, key=lambda m: m.client_id)],
        "rejected": rejected,
    }


def unmaskings(answers: Answers) -> tuple[list[Unmasking], dict[str, str]]:
    got, rejected = parsed_all(
        answers, lambda o, d: [parse(o, d, Unmasking, lambda m: m.client_id)]
    )
    return [m for owner in sorted(got) for m in got[owner]], rejected


def failed_cause(task_name: str, round_id: int, phase: str, exc: SecAggError) -> str:
    """The cause a round fails with (the task's cause): the reason first, then which
    round and phase, and the check's own words (how many silos, against which t)."""
    log.warning("secagg.round_failed", phase=phase, reason=exc.reason, culprit=exc.culprit)
    return f"{exc.reason}: round {round_id} of task {task_name!r}, phase {phase}: {exc.message}"
