"""Holding a round's updates on local disk for the strategies that need them all at once.

A robust rule (median, trimmed mean, Krum) reads every update of a round together. Kept in
memory, N updates cost N models; spilled, each tensor is written once to a file under the
handler's temporary directory (Lambda: `/tmp`, its ephemeral storage, 512 MB by default and
up to 10 GB) and mapped back read-only (`np.memmap`), so the strategy's chunked reductions
hold N x chunk in memory and the page cache does the rest. The files go when the round's
aggregation ends (`Spill.close`), whatever happened.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np

from fedasync.core.codec import Array


class Spill:
    """A `keep` for `SyncStrategy.fold`: writes each update to disk, returns it mapped."""

    def __init__(self, root: str | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fedasync-round-", dir=root)
        self._count = 0

    def __call__(self, weights: Mapping[str, Array]) -> Mapping[str, Array]:
        folder = Path(self._dir.name) / f"{self._count:06d}"
        folder.mkdir()
        self._count += 1
        mapped: dict[str, Array] = {}
        for i, (name, arr) in enumerate(weights.items()):
            path = folder / f"{i:06d}.bin"
            if arr.size == 0:  # a file of 0 bytes cannot be mapped
                mapped[name] = np.zeros(arr.shape, dtype=arr.dtype)
                continue
            np.ascontiguousarray(arr).tofile(path)
            mapped[name] = np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
        return mapped

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> Spill:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def spill_root() -> str | None:
    """Where spills go: `FEDASYNC_SPILL_DIR` if set, else the system's temporary directory."""
    return os.environ.get("FEDASYNC_SPILL_DIR") or None
