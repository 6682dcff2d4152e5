"""A silo's side of one SecAgg round: a session object that holds the round's secrets.

One `SiloSession` per silo per round: it draws its X25519 key pairs (c_u, s_u) and its
self-mask seed b_u from the OS CSPRNG, never shows them (no attribute is public, the
repr says nothing), and answers each phase with the message to send. It refuses what
the protocol forbids: fewer than t peers in any phase, a forged advert, a tampered
share, a survivor list other than the one it signed, and revealing both b_v and s_v^SK
for one peer v (which would let the server unmask v's input).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from fedasync.core.secagg import crypto, graph, shamir
from fedasync.core.secagg.errors import BELOW_THRESHOLD, FORGED, PROTOCOL, REFUSED, SecAggError
from fedasync.core.secagg.messages import (
    KEY,
    SEED,
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    RevealedShare,
    ShareKind,
    SurvivorSignature,
    Unmasking,
    advert_statement,
    mask_sign,
    masked_statement,
    parse_fields,
    share_points,
    share_statement,
    shares_aad,
    survivors_statement,
)
from fedasync.core.secagg.quantize import Quantizer


def quorum(members: Iterable[str], threshold: int, phase: str) -> None:
    count = len(set(members))
    if count < threshold:
        raise SecAggError(
            f"{phase}: {count} silos, below the threshold t={threshold}; the round cannot go on",
            reason=BELOW_THRESHOLD,
        )


def verify_adverts(
    ctx: crypto.RoundContext, adverts: Sequence[KeyAdvert], identities: Mapping[str, bytes]
) -> dict[str, KeyAdvert]:
    """U1: the adverts, each signed by its silo's registered identity, at least t."""
    out: dict[str, KeyAdvert] = {}
    for advert in adverts:
        who = advert.client_id
        if who not in identities:
            raise SecAggError(f"silo {who!r} is not registered", reason=FORGED, culprit=who)
        if who in out:
            raise SecAggError(f"silo {who!r} advertised twice", reason=PROTOCOL, culprit=who)
        crypto.verify(identities[who], advert.signature, advert.signed_bytes(ctx), who, "keys")
        if advert.channel_pk == advert.mask_pk:
            raise SecAggError(f"silo {who!r} reused one key", reason=PROTOCOL, culprit=who)
        out[who] = advert
    quorum(out, ctx.threshold, "advertise keys")
    return out


class SiloSession:
    def __init__(
        self,
        client_id: str,
        identity: Ed25519PrivateKey,
        ctx: crypto.RoundContext,
        quantizer: Quantizer,
    ) -> None:
        self.client_id = client_id
        self.ctx = ctx
        self.quantizer = quantizer
        self._identity = identity
        self._channel = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._seed = os.urandom(crypto.SEED_BYTES)
        self._roster: dict[str, KeyAdvert] = {}
        self._identities: dict[str, bytes] = {}
        self._neighbours: frozenset[str] = frozenset()
        self._held: dict[str, dict[ShareKind, tuple[bytes, bytes]]] = {}
        self._u2: frozenset[str] = frozenset()
        self._u3: frozenset[str] | None = None
        self._revealed: dict[str, ShareKind] = {}
        self._sent: tuple[bytes, MaskedInput] | None = None
        self._dealt: tuple[frozenset[KeyAdvert], tuple[EncryptedShares, ...]] | None = None

    def __repr__(self) -> str:
        return f"SiloSession({self.client_id!r}, secrets not shown)"

    def advertise(self) -> KeyAdvert:
        """Round 0: the two public keys, signed."""
        c_pk, s_pk = self._public_keys()
        statement = advert_statement(self.ctx, self.client_id, c_pk, s_pk)
        return KeyAdvert(self.client_id, c_pk, s_pk, crypto.sign(self._identity, statement))

    def share_keys(
        self, adverts: Sequence[KeyAdvert], identities: Mapping[str, bytes]
    ) -> list[EncryptedShares]:
        """Round 1: shares of s_u^SK and b_u for each neighbour in U1, each sealed to it
        (every other silo of U1, or its k neighbours under SecAgg+).

        Once per round: a retry with the same adverts gets the same messages; other adverts
        are refused (a second dealing would hand out shares of a second set of polynomials)."""
        if self._dealt is not None:
            if self._dealt[0] != frozenset(adverts):
                raise SecAggError("a second, different roster in one round", reason=REFUSED)
            return list(self._dealt[1])
        roster = verify_adverts(self.ctx, adverts, identities)
        own = roster.get(self.client_id)
        if own is None or (own.channel_pk, own.mask_pk) != self._public_keys():
            raise SecAggError("the roster does not hold this silo's own keys", reason=PROTOCOL)
        self._roster = roster
        self._identities = dict(identities)
        self._neighbours = graph.neighbours(self.ctx, list(roster))[self.client_id]
        ranks = share_points(list(roster))
        points = {c: ranks[c] for c in self._neighbours | {self.client_id}}
        t = self.ctx.threshold
        quorum(points, t, "the neighbourhood of this silo")
        key_shares = shamir.split(self._mask_secret(), points.values(), t)
        seed_shares = shamir.split(self._seed, points.values(), t)
        out = []
        for peer, x in points.items():
            plain = [
                self._signed(peer, KEY, key_shares[x]),
                self._signed(peer, SEED, seed_shares[x]),
            ]
            if peer == self.client_id:
                self._held[peer] = {KEY: plain[0], SEED: plain[1]}
                continue
            body = crypto.fields(*plain[0], *plain[1])
            out.append(
                EncryptedShares(
                    self.client_id,
                    peer,
                    crypto.seal(
                        self._channel_key(peer, self.client_id, peer),
                        body,
                        shares_aad(self.ctx, self.client_id, peer),
                    ),
                )
            )
        self._dealt = (frozenset(adverts), tuple(out))
        return out

    def masked_input(self, inbox: Sequence[EncryptedShares], update: npt.ArrayLike) -> MaskedInput:
        """Round 2: open the shares sent to this silo (U2), then send y_u.

        Once per round: asked again (a retry), it answers the same y_u for the same update
        and inbox, and refuses anything else. Two masked inputs under the same masks would
        give away the difference of the two updates."""
        if not self._roster:
            raise SecAggError("masked input before share keys", reason=PROTOCOL)
        quantised = self.quantizer.quantize(update)
        if self._sent is not None:
            senders = frozenset(m.sender for m in inbox) | {self.client_id}
            if self._sent[0] != quantised.tobytes() or senders != self._u2:
                raise SecAggError("a second, different masked input in one round", reason=REFUSED)
            return self._sent[1]
        for message in inbox:
            self._open(message)
        self._u2 = frozenset(self._held)
        quorum(self._u2, self.ctx.threshold, "share keys")
        y = quantised.copy()
        y += crypto.expand(self._seed, y.size, self.quantizer.ring_bits)
        for peer in sorted(self._u2 - {self.client_id}):
            seed = self._pair_seed(peer)
            mask = crypto.expand(seed, y.size, self.quantizer.ring_bits)
            if mask_sign(self.client_id, peer) > 0:
                y += mask
            else:
                y -= mask
        y &= self.quantizer.mask
        signature = crypto.sign(self._identity, masked_statement(self.ctx, self.client_id, y))
        self._sent = (quantised.tobytes(), MaskedInput(self.client_id, y, signature))
        return self._sent[1]

    def consistency(self, survivors: Iterable[str]) -> SurvivorSignature:
        """Round 3: sign the survivor list U3 (once; a second, different list is refused)."""
        u3 = frozenset(survivors)
        if not self._u2:
            raise SecAggError("consistency check before masked input", reason=PROTOCOL)
        if self._u3 is not None and self._u3 != u3:
            raise SecAggError("a second, different survivor list", reason=REFUSED)
        local = u3 & (self._neighbours | {self.client_id})
        if not (u3 <= set(self._roster) and local <= self._u2 and self.client_id in u3):
            raise SecAggError(
                "the survivor list names silos that did not share keys with this one",
                reason=PROTOCOL,
            )
        quorum(u3, self.ctx.threshold, "masked input")
        self._u3 = u3
        return SurvivorSignature(
            self.client_id, crypto.sign(self._identity, survivors_statement(self.ctx, u3))
        )

    def unmask(
        self, signatures: Sequence[SurvivorSignature], identities: Mapping[str, bytes]
    ) -> Unmasking:
        """Round 4: after t signatures on U3, b_v's share for v in U3, s_v^SK's for the dropped."""
        if self._u3 is None:
            raise SecAggError("unmask before the consistency check", reason=PROTOCOL)
        statement = survivors_statement(self.ctx, self._u3)
        signers = set()
        for signed in signatures:
            who = signed.client_id
            if who not in self._u3:
                raise SecAggError(
                    f"{who!r} signed but did not survive", reason=PROTOCOL, culprit=who
                )
            crypto.verify(identities[who], signed.signature, statement, who, "survivor list")
            signers.add(who)
        quorum(signers, self.ctx.threshold, "consistency check")
        out = []
        for dealer in sorted(self._u2):
            kind: ShareKind = SEED if dealer in self._u3 else KEY
            if self._revealed.get(dealer, kind) != kind:
                raise SecAggError(f"asked for both shares of {dealer!r}", reason=REFUSED)
            self._revealed[dealer] = kind
            share, sig = self._held[dealer][kind]
            out.append(RevealedShare(dealer, self.client_id, kind, share, sig))
        return Unmasking(self.client_id, tuple(out))

    # -- helpers --------------------------------------------------------------------------

    def _public_keys(self) -> tuple[bytes, bytes]:
        return crypto.raw_public(self._channel), crypto.raw_public(self._mask)

    def _mask_secret(self) -> bytes:
        return self._mask.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def _signed(self, holder: str, kind: ShareKind, share: shamir.Share) -> tuple[bytes, bytes]:
        raw = share.to_bytes()
        statement = share_statement(self.ctx, self.client_id, holder, kind, raw)
        return raw, crypto.sign(self._identity, statement)

    def _channel_key(self, peer: str, sender: str, recipient: str) -> bytes:
        shared = crypto.agree(self._channel, self._roster[peer].channel_pk, peer)
        return crypto.channel_key(shared, self.ctx, sender, recipient)

    def _pair_seed(self, peer: str) -> bytes:
        shared = crypto.agree(self._mask, self._roster[peer].mask_pk, peer)
        return crypto.pair_seed(shared, self.ctx, self.client_id, peer)

    def _open(self, message: EncryptedShares) -> None:
        sender = message.sender
        if message.recipient != self.client_id or sender not in self._neighbours:
            raise SecAggError(
                f"a share message from {sender!r} is not for this silo",
                reason=PROTOCOL,
                culprit=sender,
            )
        if sender in self._held:
            raise SecAggError(
                f"two share messages from {sender!r}", reason=PROTOCOL, culprit=sender
            )
        key = self._channel_key(sender, sender, self.client_id)
        body = crypto.open_sealed(key, message.ciphertext, message.aad(self.ctx), sender)
        key_share, key_sig, seed_share, seed_sig = parse_fields(body, 4)
        # the dealer's signatures are checked now, so a dealer cannot later frame this
        # silo by having signed a share other than the one it sent
        for kind, share, sig in ((KEY, key_share, key_sig), (SEED, seed_share, seed_sig)):
            statement = share_statement(self.ctx, sender, self.client_id, kind, share)
            crypto.verify(self._identities[sender], sig, statement, sender, f"{kind} share")
        self._held[sender] = {KEY: (key_share, key_sig), SEED: (seed_share, seed_sig)}
