"""Who masks and shares with whom: everyone (SecAgg), or a k-regular graph (SecAgg+).

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova 2020) replaces the complete graph by a
sparse random one: each silo masks with, and shares its secrets among, only its k
neighbours, so a silo's cost is O(k) instead of O(n) and k = O(log n) keeps the
guarantees with high probability against a non-adaptive adversary. The graph here is the
Harary graph H_{k,n} (k-connected with the fewest edges: each node joined to its k/2
nearest nodes on each side of a cycle, plus the opposite node when k is odd and n even)
laid over a pseudo-random order of the roster: the silos sorted by
SHA-256(graph_seed ‖ client_id). The seed is public (every silo derives the same graph)
but must be drawn at random (`os.urandom`) after the roster is known and before the
shares are dealt, so no one chooses its neighbours: the wiring puts it in the round's
notice, and the round context binds it into every signature.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes

from fedasync.core.secagg.crypto import RoundContext, fields
from fedasync.core.secagg.errors import PROTOCOL, SecAggError


def _rank(seed: bytes, client_id: str) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(fields(b"fedasync/secagg/graph", seed, client_id))
    return digest.finalize()


def harary(roster: Sequence[str], degree: int, seed: bytes) -> dict[str, frozenset[str]]:
    """H_{k,n} over the seed's order of the roster: each silo's neighbours (not itself)."""
    nodes = sorted(set(roster), key=lambda c: (_rank(seed, c), c))
    n = len(nodes)
    if degree < 1:
        raise SecAggError(f"a neighbour graph needs degree >= 1, not {degree}", reason=PROTOCOL)
    if degree >= n - 1:
        return {c: frozenset(nodes) - {c} for c in nodes}
    if degree % 2 and n % 2:
        degree += 1  # H_{k,n} with k and n odd is not regular; one more edge per node
    out: dict[str, set[str]] = {c: set() for c in nodes}
    for i, c in enumerate(nodes):
        for step in range(1, degree // 2 + 1):
            for j in (i + step, i - step):
                out[c].add(nodes[j % n])
        if degree % 2:
            out[c].add(nodes[(i + n // 2) % n])
    return {c: frozenset(peers) for c, peers in out.items()}


def neighbours(ctx: RoundContext, roster: Sequence[str]) -> dict[str, frozenset[str]]:
    """The round's graph over U1: complete for SecAgg, H_{k,n} for SecAgg+."""
    if ctx.degree is None:
        everyone = frozenset(roster)
        return {c: everyone - {c} for c in everyone}
    return harary(roster, ctx.degree, ctx.graph_seed)
