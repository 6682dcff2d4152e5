"""The server's side of a SecAgg round, pure: messages in, checked sets and the sum out.

The server holds no secret of its own. It checks every signature (a silo's identity is
its registered Ed25519 public key), relays the sealed shares it cannot read, fixes the
sets U1 ⊇ U2 ⊇ U3 from who answered each phase in time (each at least t), and in the
unmask phase rebuilds b_u for every survivor u in U3 and s_u^SK for every silo u in
U2 \\ U3 that dropped after sharing its keys, and removes their masks from Σ y_u.

A revealed share is accepted only under its dealer's signature and at its holder's
x-coordinate, so a silo that alters one is detected and named (`rejected`); the round
still closes if every dealer keeps t good shares, and fails with `secagg_below_threshold`
(naming the rejected silos) otherwise: never a wrong sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedasync.core.secagg import crypto, graph, shamir
from fedasync.core.secagg.errors import BAD_SHARE, BELOW_THRESHOLD, PROTOCOL, REFUSED, SecAggError
from fedasync.core.secagg.messages import (
    KEY,
    SEED,
    KeyAdvert,
    Unmasking,
    mask_sign,
    share_points,
    share_statement,
)
from fedasync.core.secagg.quantize import FloatVector, Quantizer, RingVector, ring_sum
from fedasync.core.secagg.relay import masked_inputs, route_shares, verify_survivor_signatures
from fedasync.core.secagg.silo import verify_adverts

__all__ = [
    "UnmaskResult",
    "masked_inputs",
    "route_shares",
    "unmask",
    "unmask_sum",
    "verify_adverts",
    "verify_survivor_signatures",
]


@dataclass(frozen=True)
class UnmaskResult:
    total: RingVector  # Σ_{u ∈ U3} quantise(x_u) mod 2^b
    values: FloatVector  # its dequantised value
    survivors: tuple[str, ...]  # U3
    dropped: tuple[str, ...]  # U2 \ U3: shared keys, sent no masked input
    rejected: Mapping[str, str] = field(default_factory=dict)  # holder -> reason


def _checked_shares(
    ctx: crypto.RoundContext,
    *,
    unmasking: Unmasking,
    u2: frozenset[str],
    u3: frozenset[str],
    x: int,
    peers: frozenset[str],
    identities: Mapping[str, bytes],
) -> dict[str, shamir.Share]:
    holder, out = unmasking.client_id, {}
    for revealed in unmasking.shares:
        dealer = revealed.dealer
        if dealer not in peers:
            raise SecAggError(
                f"silo {holder!r} revealed a share of {dealer!r}, not a neighbour",
                reason=REFUSED,
                culprit=holder,
            )
        if dealer in out:
            raise SecAggError(
                f"silo {holder!r} revealed two shares of {dealer!r}", reason=REFUSED, culprit=holder
            )
        if revealed.kind != (SEED if dealer in u3 else KEY) or dealer not in u2:
            raise SecAggError(
                f"silo {holder!r} revealed the {revealed.kind} share of {dealer!r}",
                reason=REFUSED,
                culprit=holder,
            )
        statement = share_statement(ctx, dealer, holder, revealed.kind, revealed.share)
        try:
            crypto.verify(identities[dealer], revealed.dealer_signature, statement, dealer, "share")
            share = shamir.Share.from_bytes(revealed.share, crypto.SEED_BYTES)
        except SecAggError as exc:
            raise SecAggError(
                f"silo {holder!r} revealed a share of {dealer!r} that {dealer!r} did not deal",
                reason=BAD_SHARE,
                culprit=holder,
            ) from exc
        if revealed.holder != holder or share.x != x:
            raise SecAggError(
                f"silo {holder!r} revealed another silo's share", reason=BAD_SHARE, culprit=holder
            )
        out[dealer] = share
    return out


def _require_shares(
    shares: Mapping[str, list[shamir.Share]], rejected: Mapping[str, str], threshold: int
) -> None:
    """At least t good shares of every secret, or the round fails naming the rejected."""
    short = sorted(u for u, got in shares.items() if len(got) < threshold)
    if short:
        blamed = ", ".join(f"{h!r} ({r})" for h, r in sorted(rejected.items())) or "none"
        raise SecAggError(
            f"unmask: fewer than t={threshold} valid shares for {short}; rejected silos: {blamed}",
            reason=BELOW_THRESHOLD,
            culprit=min(rejected) if rejected else None,
        )


def _collect(
    ctx: crypto.RoundContext,
    *,
    roster: Mapping[str, KeyAdvert],
    u2: frozenset[str],
    u3: frozenset[str],
    unmaskings: Sequence[Unmasking],
    identities: Mapping[str, bytes],
) -> tuple[dict[str, list[shamir.Share]], dict[str, str]]:
    points = share_points(list(roster))
    peers = graph.neighbours(ctx, list(roster))
    shares: dict[str, list[shamir.Share]] = {u: [] for u in u2}
    rejected: dict[str, str] = {}
    seen: set[str] = set()
    for unmasking in unmaskings:
        holder = unmasking.client_id
        if holder in seen or holder in rejected:
            continue  # at-least-once delivery: a holder counts once
        if holder not in u3:
            rejected[holder] = PROTOCOL
            continue
        try:
            checked = _checked_shares(
                ctx,
                unmasking=unmasking,
                u2=u2,
                u3=u3,
                x=points[holder],
                peers=peers[holder] | {holder},
                identities=identities,
            )
        except SecAggError as exc:
            rejected[holder] = exc.reason
            continue
        seen.add(holder)
        for dealer, share in checked.items():
            shares[dealer].append(share)
    _require_shares(shares, rejected, ctx.threshold)
    return shares, rejected


def _remove_pair_masks(
    ctx: crypto.RoundContext,
    total: RingVector,
    *,
    dropped: str,
    secret: X25519PrivateKey,
    survivors: Mapping[str, KeyAdvert],
    bits: int,
) -> None:
    """Take out of `total` the masks PRG(s_vu) each surviving neighbour v added for u."""
    for v in sorted(survivors):
        shared = crypto.agree(secret, survivors[v].mask_pk, v)
        mask = crypto.expand(crypto.pair_seed(shared, ctx, dropped, v), total.size, bits)
        if mask_sign(v, dropped) > 0:  # y_v added PRG(s_vu)
            total -= mask
        else:
            total += mask


def unmask(
    ctx: crypto.RoundContext,
    *,
    quantizer: Quantizer,
    roster: Mapping[str, KeyAdvert],
    u2: frozenset[str],
    masked: Mapping[str, RingVector],
    unmaskings: Sequence[Unmasking],
    identities: Mapping[str, bytes],
) -> UnmaskResult:
    """Round 4: Σ_{u ∈ U3} x_u from the masked inputs and the revealed shares."""
    return unmask_sum(
        ctx,
        quantizer=quantizer,
        roster=roster,
        u2=u2,
        u3=frozenset(masked),
        masked_sum=ring_sum([masked[u] for u in sorted(masked)], quantizer.mask),
        unmaskings=unmaskings,
        identities=identities,
    )


def unmask_sum(
    ctx: crypto.RoundContext,
    *,
    quantizer: Quantizer,
    roster: Mapping[str, KeyAdvert],
    u2: frozenset[str],
    u3: frozenset[str],
    masked_sum: RingVector,
    unmaskings: Sequence[Unmasking],
    identities: Mapping[str, bytes],
) -> UnmaskResult:
    """`unmask` from Σ_{u ∈ U3} y_u mod 2^b (what the server keeps when U3 is fixed: one
    vector, not |U3|); the masks are removed from a copy."""
    dropped = u2 - u3
    shares, rejected = _collect(
        ctx, roster=roster, u2=u2, u3=u3, unmaskings=unmaskings, identities=identities
    )
    t, bits = ctx.threshold, quantizer.ring_bits
    peers = graph.neighbours(ctx, list(roster))
    total = masked_sum.copy()
    for u in sorted(u3):
        seed = shamir.reconstruct(shares[u], t, crypto.SEED_BYTES)
        total -= crypto.expand(seed, total.size, bits)
    for u in sorted(dropped):
        secret = X25519PrivateKey.from_private_bytes(
            shamir.reconstruct(shares[u], t, crypto.SEED_BYTES)
        )
        if crypto.raw_public(secret) != roster[u].mask_pk:
            raise SecAggError(
                f"the key rebuilt for {u!r} is not the one it advertised", reason=BAD_SHARE
            )
        survivors = {v: roster[v] for v in u3 & peers[u]}
        _remove_pair_masks(ctx, total, dropped=u, secret=secret, survivors=survivors, bits=bits)
    total &= quantizer.mask
    return UnmaskResult(
        total,
        quantizer.dequantize_sum(total, len(u3)),
        tuple(sorted(u3)),
        tuple(sorted(dropped)),
        rejected,
    )
