"""A silo's SecAgg identity: an Ed25519 private key in a PEM file of its own.

`fedasync client keygen --out PATH` writes one (mode 0600, never over an existing file)
and prints the raw public key, base64, for the operator to register in the task's
`secure_aggregation.identities`; `run --secagg-key PATH` loads it. The private key is
never printed or logged.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from fedasync.core.errors import ConfigError


def public_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key, base64: what `secure_aggregation.identities` holds."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def write_new_key(path: Path) -> str:
    """A new private key at `path` (PEM, PKCS#8, mode 0600); its public key, base64.
    An existing file is refused: it may be the silo's registered identity."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"{str(path)!r} exists: keygen never overwrites a key (it may be the one "
            "registered for this silo); remove it first or choose another --out"
        ) from exc
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    return public_b64(key)


def load_key(path: Path) -> Ed25519PrivateKey:
    """The silo's identity from a PEM file; a clear error naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"SecAgg key {str(path)!r} cannot be read: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"SecAgg key {str(path)!r} is not an unencrypted PEM private key"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"SecAgg key {str(path)!r} is not an Ed25519 key")
    return key


def decode_identities(identities: dict[str, str]) -> dict[str, bytes]:
    """The task config's `secure_aggregation.identities` (base64) as raw public keys."""
    return {c: base64.b64decode(k, validate=True) for c, k in identities.items()}
