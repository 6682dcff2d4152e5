"""Seeded non-IID splits of a labelled dataset among `n_clients` silos, for demos and
benchmarks. Each returns one sorted index array per client; together they hold every
example exactly once, and every client holds at least one (else a `ValueError` saying
why). Same labels, same seed, same split: N processes agree without talking.

- `dirichlet`: label skew; each class is split by proportions drawn from Dirichlet(alpha)
  (Hsu et al. 2019). Small alpha: each silo sees few classes.
- `shards`: pathological label skew (McMahan et al. 2017): sort by label, cut into
  `n_clients * shards_per_client` shards of (near) equal size, deal each client
  `shards_per_client` of them at random. When the shards align with the classes, a client
  sees at most `shards_per_client` classes.
- `quantity`: quantity skew (Li et al. 2021, NIID-Bench): the client sizes follow
  Dirichlet(alpha) over the clients, labels IID within a client (a seeded shuffle cut at
  those sizes). Deviation from NIID-Bench, which redraws until no client is too small:
  each client is given `min_examples` first and the rest is shared by the drawn
  proportions, so there is no redraw loop and no failure once the minimum fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
Labels = npt.NDArray[np.integer[Any]]


class PartitionError(ValueError):
    """The split asked for cannot be made (its parameters, or too few examples)."""


DEFAULT_MIN_EXAMPLES = 10
DEFAULT_SHARDS_PER_CLIENT = 2
_MAX_DRAWS = 1000


def dirichlet_partition(
    y: Labels,
    n_clients: int,
    alpha: float,
    seed: int,
    *,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> list[IntArray]:
    """Split example indices among `n_clients` with per-class Dirichlet(alpha) shares.

    Draws again (from the same seeded generator, so still deterministic) until every
    client holds at least `min_examples`. Returns sorted, disjoint index arrays that
    together cover every example.
    """
    if n_clients < 1 or alpha <= 0.0:
        raise PartitionError(f"need n_clients >= 1 and alpha > 0; got {n_clients} and {alpha}")
    _check_minimum(len(y), n_clients, min_examples)
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DRAWS):
        parts = _draw_partition(y, n_clients, alpha, rng)
        if min(len(p) for p in parts) >= max(1, min_examples):
            return parts
    raise PartitionError(
        f"no Dirichlet({alpha}) partition of {len(y)} examples over {n_clients} clients gave "
        f"each >= {min_examples} examples in {_MAX_DRAWS} draws; raise alpha or lower the minimum"
    )


def _draw_partition(
    y: Labels, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[IntArray]:
    buckets: list[list[IntArray]] = [[] for _ in range(n_clients)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, piece in enumerate(np.split(members, cuts)):
            buckets[client].append(piece)
    return [np.sort(np.concatenate(b)).astype(np.int64) for b in buckets]


def shard_partition(
    y: Labels,
    n_clients: int,
    seed: int,
    *,
    shards_per_client: int = DEFAULT_SHARDS_PER_CLIENT,
) -> list[IntArray]:
    """McMahan et al.'s shards: sorted by label (ties by index), cut into
    `n_clients * shards_per_client` contiguous shards whose sizes differ by at most one,
    `shards_per_client` of them dealt to each client by a seeded permutation."""
    if n_clients < 1 or shards_per_client < 1:
        raise PartitionError(
            f"need n_clients >= 1 and shards_per_client >= 1; got {n_clients} and "
            f"{shards_per_client}"
        )
    shards = n_clients * shards_per_client
    if shards > len(y):
        raise PartitionError(
            f"{len(y)} examples cannot be cut into {shards} shards ({n_clients} clients x "
            f"{shards_per_client}): every shard needs an example; lower --shards-per-client"
        )
    by_label = np.argsort(np.asarray(y), kind="stable")
    pieces = np.array_split(by_label, shards)
    dealt = np.random.default_rng(seed).permutation(shards).reshape(n_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])).astype(np.int64) for row in dealt]


def quantity_partition(
    y: Labels,
    n_clients: int,
    alpha: float,
    seed: int,
    *,
    min_examples: int = 1,
) -> list[IntArray]:
    """Quantity skew: client sizes `min_examples + share of the rest`, the shares drawn
    from Dirichlet(alpha) over the clients (rounded by largest remainder, so they sum to
    the rest exactly); the examples are a seeded shuffle cut at those sizes."""
    if n_clients < 1 or alpha <= 0.0:
        raise PartitionError(f"need n_clients >= 1 and alpha > 0; got {n_clients} and {alpha}")
    _check_minimum(len(y), n_clients, max(1, min_examples))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    floor = max(1, min_examples)
    rest = len(y) - n_clients * floor
    exact = rng.dirichlet(np.full(n_clients, alpha)) * rest
    counts = np.floor(exact).astype(np.int64)
    # the units lost to rounding down go to the largest fractional parts (ties: lower index)
    short = rest - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    cuts = np.cumsum(counts + floor)[:-1]
    return [np.sort(part).astype(np.int64) for part in np.split(order, cuts)]


def _check_minimum(n_examples: int, n_clients: int, min_examples: int) -> None:
    if n_clients * max(1, min_examples) > n_examples:
        raise PartitionError(
            f"{n_examples} examples cannot give {n_clients} clients {max(1, min_examples)} each"
        )


_PARTITIONERS: dict[str, tuple[Callable[..., list[IntArray]], tuple[str, ...]]] = {
    "dirichlet": (dirichlet_partition, ("alpha", "min_examples")),
    "shards": (shard_partition, ("shards_per_client",)),
    "quantity": (quantity_partition, ("alpha", "min_examples")),
}
PARTITIONS: tuple[str, ...] = tuple(_PARTITIONERS)


def partition(
    kind: str, labels: Labels, n_clients: int, seed: int, **params: Any
) -> list[IntArray]:
    """The `kind` split (`dirichlet`, `shards`, `quantity`) with its own `params`
    (`alpha`, `min_examples`; `shards_per_client`); a parameter of another kind is an
    error, not silently dropped."""
    if kind not in _PARTITIONERS:
        raise PartitionError(f"unknown partition {kind!r}; expected one of {', '.join(PARTITIONS)}")
    split, allowed = _PARTITIONERS[kind]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PartitionError(
            f"partition {kind!r} takes {', '.join(allowed)}; not {', '.join(unknown)}"
        )
    if kind == "shards":
        return split(labels, n_clients, seed, **params)
    if "alpha" not in params:
        raise PartitionError(f"partition {kind!r} needs alpha")
    alpha = params.pop("alpha")
    return split(labels, n_clients, alpha, seed, **params)
