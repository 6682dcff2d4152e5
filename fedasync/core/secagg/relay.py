"""The server's relay phases (rounds 1-3), pure: who is in U2 and U3, and what each gets.

The server reads none of what it relays: the sealed shares go to their recipients as
they are; it checks who sent what to whom, the masked inputs' signatures and shapes, and
the survivors' signatures on U3. Each set must hold at least t silos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedasync.core.secagg import crypto, graph
from fedasync.core.secagg.errors import PROTOCOL, SecAggError
from fedasync.core.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    SurvivorSignature,
    survivors_statement,
)
from fedasync.core.secagg.quantize import Quantizer, RingVector
from fedasync.core.secagg.silo import quorum


def route_shares(
    ctx: crypto.RoundContext, roster: Mapping[str, KeyAdvert], messages: Sequence[EncryptedShares]
) -> tuple[frozenset[str], dict[str, list[EncryptedShares]]]:
    """U2 (the silos that sealed a share to each of their neighbours in U1) and each inbox."""
    peers = graph.neighbours(ctx, list(roster))
    sent: dict[str, dict[str, EncryptedShares]] = {}
    for message in messages:
        who, to = message.sender, message.recipient
        if who not in roster or to not in peers[who]:
            raise SecAggError(
                f"silo {who!r} addressed shares to {to!r}", reason=PROTOCOL, culprit=who
            )
        previous = sent.setdefault(who, {}).get(to)
        if previous is not None and previous != message:
            raise SecAggError(
                f"silo {who!r} sent two share messages to {to!r}", reason=PROTOCOL, culprit=who
            )
        sent[who][to] = message
    u2 = frozenset(who for who, out in sent.items() if set(out) == peers[who])
    quorum(u2, ctx.threshold, "share keys")
    inboxes: dict[str, list[EncryptedShares]] = {v: [] for v in u2}
    for who in sorted(u2):
        for to, message in sent[who].items():
            if to in u2:
                inboxes[to].append(message)
    return u2, inboxes


def masked_inputs(
    ctx: crypto.RoundContext,
    u2: frozenset[str],
    *,
    messages: Sequence[MaskedInput],
    quantizer: Quantizer,
    length: int,
    identities: Mapping[str, bytes],
) -> dict[str, RingVector]:
    """U3's masked inputs: from silos of U2, signed, one each, of the right length."""
    out: dict[str, RingVector] = {}
    for message in messages:
        who, vec = message.client_id, message.vector
        if who not in u2:
            raise SecAggError(f"silo {who!r} is not in U2", reason=PROTOCOL, culprit=who)
        if (
            vec.dtype != quantizer.dtype
            or vec.shape != (length,)
            or (vec.size and int(vec.max()) >= quantizer.modulus)
        ):
            raise SecAggError(
                f"the masked input of silo {who!r} is not {length} ring elements",
                reason=PROTOCOL,
                culprit=who,
            )
        crypto.verify(
            identities[who], message.signature, message.signed_bytes(ctx), who, "masked input"
        )
        if who in out and not (out[who] == vec).all():
            raise SecAggError(f"silo {who!r} sent two masked inputs", reason=PROTOCOL, culprit=who)
        out[who] = vec
    quorum(out, ctx.threshold, "masked input")
    return out


def verify_survivor_signatures(
    ctx: crypto.RoundContext,
    u3: frozenset[str],
    signatures: Sequence[SurvivorSignature],
    identities: Mapping[str, bytes],
) -> list[SurvivorSignature]:
    """Round 3: the signatures of survivors on U3 (at least t)."""
    statement = survivors_statement(ctx, u3)
    good: dict[str, SurvivorSignature] = {}
    for sig in signatures:
        if sig.client_id not in u3:
            raise SecAggError(
                f"silo {sig.client_id!r} is not a survivor", reason=PROTOCOL, culprit=sig.client_id
            )
        crypto.verify(
            identities[sig.client_id], sig.signature, statement, sig.client_id, "survivor list"
        )
        good[sig.client_id] = sig
    quorum(good, ctx.threshold, "consistency check")
    return list(good.values())
