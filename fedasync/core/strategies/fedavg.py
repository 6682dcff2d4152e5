"""FedAvg (McMahan et al. 2017) as a sync strategy: the example-weighted mean of a
round's accepted updates, folded into a float64 accumulator (`fedasync.core.fedavg`)."""

from __future__ import annotations

from typing import ClassVar

from fedasync.core.codec import ModelSpec
from fedasync.core.fedavg import FedAvgAccumulator
from fedasync.core.strategies.base import Fold, Keep, SyncStrategy, keep_in_memory


class FedAvg(SyncStrategy):
    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "example-weighted mean, streamed (McMahan et al. 2017)"

    def fold(self, spec: ModelSpec, *, who: str, keep: Keep = keep_in_memory) -> Fold:
        # streamed: each update is folded in and dropped, so `keep` is not needed
        return FedAvgAccumulator(spec, who=who)
