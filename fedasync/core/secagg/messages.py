"""The messages of one SecAgg round, and the exact bytes each signature covers.

Rounds (Bonawitz et al. 2017, fig. 4), every message relayed by the server:
0. `KeyAdvert`: silo u signs (c_u^PK, s_u^PK) with its Ed25519 identity key;
1. `EncryptedShares`: u's Shamir shares of s_u^SK and b_u for v, sealed to v;
2. `MaskedInput`: y_u, the masked quantised update, signed (over its SHA-256);
3. `SurvivorSignature`: u signs the survivor list U3 it was shown (consistency check);
4. `Unmasking`: for each peer v in U2, v's share of b_v (v in U3) or of s_v^SK (v dropped),
   each with v's own signature on it, so a holder who alters a share is caught and named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes

from fedasync.core.secagg.crypto import RoundContext, fields
from fedasync.core.secagg.errors import PROTOCOL, SecAggError
from fedasync.core.secagg.quantize import RingVector

ShareKind = Literal["mask_seed", "mask_key"]  # b_u, or s_u^SK
SEED: ShareKind = "mask_seed"
KEY: ShareKind = "mask_key"


@dataclass(frozen=True)
class KeyAdvert:
    client_id: str
    channel_pk: bytes  # c_u^PK: the key of the encrypted share channel
    mask_pk: bytes  # s_u^PK: the key of the pairwise masks
    signature: bytes

    def signed_bytes(self, ctx: RoundContext) -> bytes:
        return advert_statement(ctx, self.client_id, self.channel_pk, self.mask_pk)


def advert_statement(ctx: RoundContext, client_id: str, channel_pk: bytes, mask_pk: bytes) -> bytes:
    return fields(ctx.encode(), "advert", client_id, channel_pk, mask_pk)


@dataclass(frozen=True)
class EncryptedShares:
    sender: str
    recipient: str
    ciphertext: bytes

    def aad(self, ctx: RoundContext) -> bytes:
        return shares_aad(ctx, self.sender, self.recipient)


def shares_aad(ctx: RoundContext, sender: str, recipient: str) -> bytes:
    return fields(ctx.encode(), "shares", sender, recipient)


@dataclass(frozen=True)
class MaskedInput:
    client_id: str
    vector: RingVector
    signature: bytes

    def signed_bytes(self, ctx: RoundContext) -> bytes:
        return masked_statement(ctx, self.client_id, self.vector)


def masked_statement(ctx: RoundContext, client_id: str, vector: RingVector) -> bytes:
    """What a silo signs for its masked input: the SHA-256 of its little-endian words."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(vector.astype(vector.dtype.newbyteorder("<"), copy=False).tobytes())
    return fields(ctx.encode(), "masked", client_id, str(vector.dtype.itemsize), digest.finalize())


@dataclass(frozen=True)
class SurvivorSignature:
    client_id: str
    signature: bytes


def survivors_statement(ctx: RoundContext, survivors: Iterable[str]) -> bytes:
    return fields(ctx.encode(), "survivors", *sorted(survivors))


@dataclass(frozen=True)
class RevealedShare:
    dealer: str  # whose secret this is a share of
    holder: str  # who received it in round 1 and reveals it now
    kind: ShareKind
    share: bytes  # shamir.Share.to_bytes()
    dealer_signature: bytes  # the dealer's Ed25519 signature on share_statement(...)

    def __repr__(self) -> str:
        return f"RevealedShare({self.dealer!r} via {self.holder!r}, {self.kind}, not shown)"


def share_statement(
    ctx: RoundContext, dealer: str, holder: str, kind: ShareKind, share: bytes
) -> bytes:
    return fields(ctx.encode(), "share", dealer, holder, kind, share)


@dataclass(frozen=True)
class Unmasking:
    client_id: str
    shares: tuple[RevealedShare, ...]


def parse_fields(raw: bytes, count: int) -> list[bytes]:
    """The inverse of `fields` for exactly `count` fields, or a protocol error."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise SecAggError("a message is truncated", reason=PROTOCOL)
        size = int.from_bytes(raw[pos : pos + 4], "big")
        if pos + 4 + size > len(raw):
            raise SecAggError("a message is truncated", reason=PROTOCOL)
        out.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if pos != len(raw):
        raise SecAggError("a message has trailing bytes", reason=PROTOCOL)
    return out


def share_points(roster: Sequence[str]) -> dict[str, int]:
    """Each silo's Shamir x-coordinate: its 1-based rank in the sorted roster U1."""
    ordered = sorted(roster)
    if len(set(ordered)) != len(ordered):
        raise SecAggError("the roster names a silo twice", reason=PROTOCOL)
    return {client: i + 1 for i, client in enumerate(ordered)}


def mask_sign(u: str, v: str) -> int:
    """+1 if u < v, else -1: y_u adds PRG(s_uv) for v > u and subtracts it for v < u."""
    return 1 if u < v else -1
