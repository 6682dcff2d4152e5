"""Holding a round's updates on local disk for the strategies that need them all at once.

A robust rule (median, trimmed mean, Krum) reads every update of a round together. Kept in
memory, N updates cost N models; spilled, each tensor is written once to a file under the
handler's temporary directory (Lambda: `/tmp`, its ephemeral storage, 512 MB by default and
up to 10 GB) and mapped back read-only (`np.memmap`), so the strategy's chunked reductions
hold N x chunk in memory and the page cache does the rest. The files go when the round's
aggregation ends (`Spill.close`), whatever happened.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from fedasync.core.codec import NUMPY_DTYPES, Array, ModelSpec

_DTYPES = {str(d): d for d in NUMPY_DTYPES.values()}  # a spec's dtype name -> numpy


class Spill:
    """A `keep` for `SyncStrategy.fold`: writes each update to disk, returns it mapped."""

    def __init__(self, root: str | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fedasync-round-", dir=root)
        self._count = 0
        self._own: list[Mapping[str, Array]] = []  # what `stream_in` mapped: kept as is

    def _folder(self) -> Path:
        folder = Path(self._dir.name) / f"{self._count:06d}"
        folder.mkdir()
        self._count += 1
        return folder

    async def stream_in(
        self, chunks: AsyncIterator[tuple[str, int, Array]], spec: ModelSpec
    ) -> Mapping[str, Array]:
        """An update spilled as its chunks (tensor name, flat element offset, values) arrive,
        each written at its place in its tensor's file; the update mapped back read-only.
        Memory: one chunk, whatever the model's size."""
        folder = self._folder()
        index = {t.name: i for i, t in enumerate(spec)}
        handles = {t.name: (folder / f"{i:06d}.bin").open("w+b") for i, t in enumerate(spec)}
        try:
            for t in spec:
                size = math.prod(t.shape) * _DTYPES[t.dtype].itemsize
                handles[t.name].truncate(size)
            async for name, start, values in chunks:
                fh = handles[name]
                await asyncio.to_thread(_write_at, fh, start * values.itemsize, values)
        finally:
            for fh in handles.values():
                fh.close()
        mapped: dict[str, Array] = {}
        for t in spec:
            path = folder / f"{index[t.name]:06d}.bin"
            mapped[t.name] = (
                np.memmap(path, dtype=_DTYPES[t.dtype], mode="r", shape=t.shape)
                if math.prod(t.shape)
                else np.zeros(t.shape, dtype=_DTYPES[t.dtype])
            )
        self._own.append(mapped)
        return mapped

    def __call__(self, weights: Mapping[str, Array]) -> Mapping[str, Array]:
        if any(weights is own for own in self._own):  # spilled already, as it streamed in
            return weights
        folder = self._folder()
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


def _write_at(fh: BinaryIO, offset: int, values: Array) -> None:
    fh.seek(offset)
    fh.write(values.tobytes())


def spill_root() -> str | None:
    """Where spills go: `FEDASYNC_SPILL_DIR` if set, else the system's temporary directory."""
    return os.environ.get("FEDASYNC_SPILL_DIR") or None
