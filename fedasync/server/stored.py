"""Server-written objects read back: from the cache, or from S3 checked against the
SHA-256 the server recorded for them."""

from __future__ import annotations

from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.errors import ChecksumMismatchError
from fedasync.server.cache import CACHE
from fedasync.server.store import ServerStore


async def load_model(store: ServerStore, key: str, sha: str | None, who: str) -> Weights:
    cached = CACHE.get(sha)
    if cached is not None:
        return cached
    data = await store.get_object(key)
    if sha is not None and codec.sha256_bytes(data) != sha:
        raise ChecksumMismatchError(
            f"{who}: stored object {key!r} does not match its recorded SHA-256"
        )
    weights = codec.decode(data, who=key)
    if sha is not None:
        CACHE.put(sha, weights)
    return weights


async def put_model(store: ServerStore, key: str, weights: Weights) -> tuple[str, int]:
    """Encode and store `weights` (immutable per key: the same bytes on a retry); its
    SHA-256 and size. The cache holds it under its SHA-256."""
    blob = codec.encode(weights)
    sha = codec.sha256_bytes(blob)
    await store.put_object(key, blob, sha)
    CACHE.put(sha, weights)
    return sha, len(blob)


async def put_version(
    store: ServerStore, key: str, weights: Weights, *, once: bool
) -> tuple[Weights, str, int]:
    """Store a new global version; (the model stored, its SHA-256, its size). `once`: a
    release with noise (central DP), which a retry would not repeat, is written only if
    no try wrote it first, and then the first try's model is the version."""
    blob = codec.encode(weights)
    sha = codec.sha256_bytes(blob)
    if not once:
        await store.put_object(key, blob, sha)
        return weights, sha, len(blob)
    stored, stored_sha = await store.put_object_once(key, blob, sha)
    if stored_sha == sha:
        return weights, sha, len(blob)
    return codec.decode(stored, who=key), stored_sha, len(stored)
