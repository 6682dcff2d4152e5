"""Robust sync strategies over all of a round's updates (`fedasync.core.robust`):
coordinate-wise median, trimmed mean (Yin et al. 2018), Krum and Multi-Krum (Blanchard
et al. 2017). As in the papers, none weighs an update by its example count: a silo cannot
buy influence by claiming more examples. Each needs every update of the round at once;
the server spills them to local disk and maps them back, so memory holds N x chunk, and
the handler's local disk holds N models (see docs/strategies.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedasync.core import robust
from fedasync.core.codec import Array, Weights
from fedasync.core.strategies.base import HoldingStrategy


def coordinatewise_bound(members: int, bound: float) -> float:
    """A coordinate-wise rule picks, per coordinate, a value within the updates' range
    there, so |r_j| <= max_i |d_ij| and ||r||^2 <= sum_j max_i d_ij^2 <= sum_i ||d_i||^2
    <= n B^2: the result may lie up to sqrt(n) B from the round's model (three deltas
    (x, x, 0), (x, 0, x), (0, x, x) of norm B have the median (x, x, x), 1.22 B long)."""
    return math.sqrt(max(members, 1)) * bound


class Median(HoldingStrategy):
    name: ClassVar[str] = "median"
    summary: ClassVar[str] = "coordinate-wise median (Yin et al. 2018)"

    def max_step(self, members: int, bound: float) -> float:
        return coordinatewise_bound(members, bound)

    def combine(
        self, updates: Sequence[Mapping[str, Array]], num_examples: Sequence[int], *, who: str
    ) -> tuple[Weights, dict[str, Any]]:
        return robust.median(updates), {}


class TrimmedMeanOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.5,
        description="fraction of the largest and of the smallest values dropped per coordinate",
    )


class TrimmedMean(HoldingStrategy):
    name: ClassVar[str] = "trimmed_mean"
    summary: ClassVar[str] = "coordinate-wise beta-trimmed mean (Yin et al. 2018)"
    Options: ClassVar[type[BaseModel]] = TrimmedMeanOptions

    def max_step(self, members: int, bound: float) -> float:
        return coordinatewise_bound(members, bound)

    def combine(
        self, updates: Sequence[Mapping[str, Array]], num_examples: Sequence[int], *, who: str
    ) -> tuple[Weights, dict[str, Any]]:
        beta = float(getattr(self.options, "beta", 0.1))
        return robust.trimmed_mean(updates, beta), {}


class KrumOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    f: int = Field(default=1, ge=0, description="Byzantine silos tolerated (n > 2f + 2)")
    m: int = Field(default=1, ge=1, description="updates averaged (1: Krum; more: Multi-Krum)")


class Krum(HoldingStrategy):
    name: ClassVar[str] = "krum"
    summary: ClassVar[str] = "Krum / Multi-Krum (Blanchard et al. 2017)"
    Options: ClassVar[type[BaseModel]] = KrumOptions

    def combine(
        self, updates: Sequence[Mapping[str, Array]], num_examples: Sequence[int], *, who: str
    ) -> tuple[Weights, dict[str, Any]]:
        f = int(getattr(self.options, "f", 1))
        m = min(int(getattr(self.options, "m", 1)), len(updates))
        chosen = robust.krum_select(updates, f, m)  # the distances, once
        return robust.mean_of(updates, chosen), {"selected": [int(i) for i in chosen]}
