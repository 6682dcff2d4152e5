"""The primitives SecAgg uses, all from the `cryptography` package (OpenSSL).

- key agreement: X25519 (RFC 7748); every shared secret goes through HKDF-SHA256
  (RFC 5869) with an `info` that binds the purpose, the task, the round and the two
  silos (length-prefixed fields, so no two contexts encode alike);
- mask generator: AES-256 in counter mode (NIST SP 800-38A) keyed by a 32-byte seed,
  initial counter block zero: its keystream, read as little-endian words, gives the ring
  elements. Each seed drives exactly one stream (pairwise seeds are per round and per
  pair, self-mask seeds are fresh per round), so the counter never needs another start.
  AES-CTR rather than ChaCha20 because AES runs in hardware (AES-NI on x86, the ARMv8
  crypto extensions on Graviton): ~1 ms per 4 MB here against ~5 ms for ChaCha20;
  a 128-bit counter also puts no practical limit on a stream's length;
- authenticated encryption: ChaCha20-Poly1305 with a random 96-bit nonce, the
  associated data binding task, round, sender and recipient;
- signatures: Ed25519 (RFC 8032); a silo's Ed25519 public key is its identity,
  registered out of band.

Nothing here keeps or logs a key: secrets live in the caller's session object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedasync.core.secagg.errors import FORGED, PROTOCOL, TAMPERED, SecAggError
from fedasync.core.secagg.quantize import RingVector

SEED_BYTES = 32
NONCE_BYTES = 12
PROTOCOL_LABEL = b"fedasync/secagg/v1"
_ZEROS = bytes(1 << 20)  # encrypted, they are the keystream


@dataclass(frozen=True)
class RoundContext:
    """What every derived key, signature and associated data is bound to.

    `degree` None: every silo masks and shares with every other (SecAgg). An integer k:
    SecAgg+ (Bell et al. 2020), each silo with its k neighbours in the Harary graph drawn
    from the public `graph_seed` (see `graph.py`); `threshold` is then per neighbourhood."""

    task_name: str
    round_id: int
    threshold: int
    degree: int | None = None
    graph_seed: bytes = b""

    def encode(self) -> bytes:
        graph = b"" if self.degree is None else fields(str(self.degree), self.graph_seed)
        return fields(
            PROTOCOL_LABEL, self.task_name, str(self.round_id), str(self.threshold), graph
        )


def fields(*parts: bytes | str) -> bytes:
    """An unambiguous encoding of a sequence of fields (each 4-byte length-prefixed)."""
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)


def raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_public(raw: bytes, who: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SecAggError(
            f"silo {who!r} advertised a malformed X25519 key", reason=PROTOCOL, culprit=who
        ) from exc


def agree(own: X25519PrivateKey, peer: bytes, who: str) -> bytes:
    """X25519(own, peer); a low-order peer key (all-zero secret) is refused."""
    try:
        return own.exchange(x25519_public(peer, who))
    except ValueError as exc:
        raise SecAggError(
            f"silo {who!r} advertised a low-order X25519 key", reason=PROTOCOL, culprit=who
        ) from exc


def pair_seed(shared: bytes, ctx: RoundContext, u: str, v: str) -> bytes:
    """s_uv = HKDF(X25519(s_u, s_v)), the same for (u, v) and (v, u)."""
    low, high = sorted((u, v))
    return hkdf(shared, fields(ctx.encode(), "mask", low, high))


def channel_key(shared: bytes, ctx: RoundContext, sender: str, recipient: str) -> bytes:
    """The AEAD key of the sender → recipient channel (one key per direction)."""
    return hkdf(shared, fields(ctx.encode(), "channel", sender, recipient))


def expand(seed: bytes, length: int, ring_bits: int) -> RingVector:
    """PRG(seed): `length` uniform elements of Z_{2^ring_bits} from the AES-CTR keystream.

    The dtype is the ring's (uint32 for b <= 32, else uint64); the result is writable."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    dtype = np.uint32 if ring_bits <= 32 else np.uint64
    width = np.dtype(dtype).itemsize
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    size = width * length
    # the keystream is written straight into one buffer, a chunk of zeros at a time (CTR
    # needs 15 spare bytes at the end of the output), so no 4 MB of zeros or copy is made
    raw = bytearray(size + 15)
    out, zeros = memoryview(raw), memoryview(_ZEROS)
    for pos in range(0, size, len(_ZEROS)):
        stream.update_into(zeros[: min(len(_ZEROS), size - pos)], out[pos:])
    # little-endian words, as the docs say, whatever the host's byte order
    words: RingVector = np.frombuffer(
        raw, dtype=np.dtype(dtype).newbyteorder("<"), count=length
    ).astype(dtype, copy=False)
    if ring_bits not in {32, 64}:
        # 2^ring_bits divides 2^(8·width): the low bits of a uniform word are uniform
        words &= dtype((1 << ring_bits) - 1)
    return words


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes, sender: str) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SecAggError(
            f"the ciphertext from silo {sender!r} fails authentication (tampered, or not "
            "for this task, round or recipient)",
            reason=TAMPERED,
            culprit=sender,
        ) from exc


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(identity: bytes, signature: bytes, message: bytes, who: str, what: str) -> None:
    """Check `signature` on `message` under silo `who`'s identity key, or raise (forged)."""
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise SecAggError(
            f"the signature of silo {who!r} on its {what} does not verify",
            reason=FORGED,
            culprit=who,
        ) from exc
