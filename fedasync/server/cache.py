"""What a warm container keeps between invocations: decoded models by SHA-256."""

from __future__ import annotations

from collections import OrderedDict

from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.limits import AGGREGATE_SIZING


class ModelCache:
    """Decoded models by SHA-256, so a warm container skips re-reading what it just wrote
    (an async head) or just validated (a sync round's updates, aggregated moments later).

    Only a hint: the state lives in S3 and DynamoDB, a miss reads S3 as a cold container
    would, and an entry is used only for the SHA-256 the TASK item records (or that a
    committed version recorded), so a hit is the same bytes a read would verify. Arrays
    are read-only: nothing downstream may change a cached model in place. Its budget
    is the aggregate function's (`fedasync.limits.AggregateSizing.cache_bytes`): a model
    larger than it is never kept, and a sync round of one is checked and folded streamed.
    """

    def __init__(self, max_bytes: int = AGGREGATE_SIZING.cache_bytes) -> None:
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, Weights] = OrderedDict()
        self._versions: dict[tuple[str, int], str] = {}

    def get(self, sha: str | None) -> Weights | None:
        if sha is None or sha not in self._models:
            return None
        self._models.move_to_end(sha)
        return self._models[sha]

    def put(self, sha: str, weights: Weights) -> None:
        size = codec.total_bytes(weights.values())
        if size > self.max_bytes:
            return
        for array in weights.values():
            array.setflags(write=False)
        self._models[sha] = weights
        self._models.move_to_end(sha)
        while sum(codec.total_bytes(w.values()) for w in self._models.values()) > self.max_bytes:
            self._models.popitem(last=False)

    def version_sha(self, task_name: str, version: int) -> str | None:
        return self._versions.get((task_name, version))

    def committed(self, task_name: str, version: int, sha: str) -> None:
        """Version `version` of `task_name` is `sha` (a committed head: immutable from now on)."""
        self._versions[(task_name, version)] = sha

    def clear(self) -> None:
        self._models.clear()
        self._versions.clear()


CACHE = ModelCache()
