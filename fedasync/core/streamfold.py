"""FedAvg folded range by range: the arithmetic of a streamed sync round, pure.

The new global's data section is cut into ranges of at most a chunk (`plan_ranges`, small
tensors sharing one, a large one spanning several). For each range the N updates' bytes
of it are folded into one float64 sum of the range's elements (`RangeSum`), in the
round's order, with exactly the operations `FedAvgAccumulator` applies to each element
(widen, multiply by `num_examples`, add; then divide by the total and cast), so the
bytes are the same as folding whole updates. The range's result is the new global's
bytes of it, written before the next range is read: memory is one range's float64 sum
and its reads, whatever the model's size and N.

The new global's header is the one `codec.encode` writes for the spec (`global_header`):
the same tensors in the same order give the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedasync.core.codec import NUMPY_DTYPES, ORDER_KEY, Array, ModelSpec
from fedasync.core.config import TaskConfig
from fedasync.core.errors import GlobalRefusedError, SchemaError
from fedasync.core.fedavg import fold_values
from fedasync.core.privacy import central_dp
from fedasync.core.stheader import Entry, write_header

# codec.encode's order of the data: by dtype, widest first, then by name
_WRITE_RANK = {"F16": 0, "BF16": 1, "F32": 2, "F64": 3}
_NAMES = {str(d): name for name, d in NUMPY_DTYPES.items()}


def streamable(cfg: TaskConfig) -> bool:
    """Whether `cfg`'s rounds are folded streamed: sync FedAvg with nothing that needs a
    whole model (central DP, clipping, a server optimizer, `max_update_norm`)."""
    return (
        cfg.mode == "sync"
        and cfg.aggregation == "fedavg"
        and not central_dp(cfg)
        and cfg.clip_update_norm is None
        and cfg.server_optimizer is None
        and cfg.max_update_norm is None
        and cfg.update_encoding is None  # a delta reads as base + delta: whole (core.deltas)
    )


def global_layout(spec: ModelSpec) -> tuple[bytes, list[Entry]]:
    """The header `codec.encode` writes for a model of `spec`, and its tensors in data order."""
    named = [(t, _NAMES[t.dtype]) for t in spec]
    named.sort(key=lambda pair: (-_WRITE_RANK[pair[1]], pair[0].name))
    entries, at = [], 0
    for t, st_name in named:
        nbytes = math.prod(t.shape) * NUMPY_DTYPES[st_name].itemsize
        entries.append(Entry(t.name, st_name, t.shape, at, at + nbytes))
        at += nbytes
    layout = [(e.name, e.dtype, e.shape, e.end - e.begin) for e in entries]
    header = write_header(layout, {ORDER_KEY: json.dumps([t.name for t in spec])})
    return header, entries


@dataclass(frozen=True)
class Piece:
    """Elements [start, start + count) of tensor `name`, at byte `offset` of its range."""

    name: str
    dtype: np.dtype[Any]
    start: int
    offset: int
    count: int


@dataclass(frozen=True)
class Range:
    begin: int  # byte offsets within the data section, end exclusive
    end: int
    pieces: tuple[Piece, ...]


def plan_ranges(entries: list[Entry], chunk_bytes: int) -> list[Range]:
    """The data section of `entries` as ranges of at most `chunk_bytes` (or one element)."""
    ranges: list[Range] = []
    begin, pieces = 0, list[Piece]()
    for e in sorted(entries, key=lambda e: e.begin):
        dtype = NUMPY_DTYPES[e.dtype]
        at = e.begin
        while at < e.end:
            room = (begin + chunk_bytes - at) // dtype.itemsize
            if room <= 0 and pieces:  # this range is full
                ranges.append(Range(begin, at, tuple(pieces)))
                begin, pieces = at, []
                continue
            count = min((e.end - at) // dtype.itemsize, max(room, 1))
            pieces.append(Piece(e.name, dtype, (at - e.begin) // dtype.itemsize, at - begin, count))
            at += count * dtype.itemsize
    if pieces:
        ranges.append(Range(begin, at, tuple(pieces)))
    return ranges


@dataclass
class RangeSum:
    """The float64 sum of one range over the round's updates, then its bytes in the model's dtypes."""

    span: Range
    _acc: Array = field(init=False)
    _scratch: Array = field(init=False)

    def __post_init__(self) -> None:
        self._acc = np.zeros(sum(p.count for p in self.span.pieces), dtype=np.float64)
        self._scratch = np.empty(0, dtype=np.float64)

    def add(self, data: bytes | memoryview | Array, num_examples: int) -> None:
        """Fold one update's bytes of the range (`end - begin` of them) in."""
        factor, at = float(num_examples), 0
        for p in self.span.pieces:
            values = np.frombuffer(data, p.dtype, p.count, p.offset)
            self._scratch = fold_values(self._acc[at : at + p.count], values, factor, self._scratch)
            at += p.count

    def add_values(self, values: list[Array], num_examples: int) -> None:
        """Fold one update's values of the range, one flat array per piece (a cached model)."""
        factor, at = float(num_examples), 0
        for p, v in zip(self.span.pieces, values, strict=True):
            self._scratch = fold_values(self._acc[at : at + p.count], v, factor, self._scratch)
            at += p.count

    def finish(self, total_examples: int, non_finite: dict[str, int]) -> bytes:
        """The new global's bytes of the range (the sum is consumed); counts the NaN/Inf
        of each tensor into `non_finite`."""
        if total_examples <= 0:
            raise SchemaError(f"FedAvg needs at least one example; the round has {total_examples}")
        self._acc /= total_examples
        out, at = bytearray(), 0
        for p in self.span.pieces:
            cast = self._acc[at : at + p.count].astype(p.dtype)  # the rounding of astype
            bad = int(cast.size - np.count_nonzero(np.isfinite(cast)))
            if bad:
                non_finite[p.name] = non_finite.get(p.name, 0) + bad
            out += cast.tobytes()
            at += p.count
        return bytes(out)


def refusal(non_finite: dict[str, int], spec: ModelSpec, who: str) -> GlobalRefusedError | None:
    """`globalcheck.check_new_global`'s refusal of a model with NaN/Inf (its first tensor in
    the model's order, with its count), from the counts `RangeSum.finish` kept."""
    for t in spec:
        bad = non_finite.get(t.name, 0)
        if bad:
            return GlobalRefusedError(
                f"{who} would make a global model with {bad} NaN/Inf value(s) in tensor "
                f"{t.name!r}; refused, the head stays",
                reason="global_non_finite",
            )
    return None
