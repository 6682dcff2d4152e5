"""Streaming FedAvg (McMahan et al. 2017): x = sum_i n_i x_i / sum_i n_i.

Updates are folded in one at a time into a float64 accumulator, so peak memory is
O(model) however many clients report, and the sum does not lose precision in the
model's own dtype. The accumulator is kept as fixed-size chunks so that producing
the result (in the model's dtype) frees float64 chunks as it goes: peak extra memory
stays about 2x a float32 model (the float64 sum), flat in the number of clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedasync.core.codec import Array, ModelSpec, Weights, check_compatible, spec_of
from fedasync.core.errors import SchemaError

CHUNK_ELEMENTS = 1 << 20  # 8 MiB of float64 per chunk
# the widened update passes through a scratch this small (512 KiB) that stays in cache;
# only the accumulator itself streams through memory
BLOCK_ELEMENTS = 1 << 16


class FedAvgAccumulator:
    """Fold (weights, num_examples) pairs in; `result()` gives the weighted mean."""

    def __init__(self, spec: ModelSpec | None = None, *, who: str = "round") -> None:
        self._spec = spec
        self._who = who
        self._chunks: dict[str, list[Array]] = {}
        self._scratch = np.empty(0, dtype=np.float64)
        self.total_examples = 0
        self.count = 0

    def add(self, weights: Mapping[str, Array], num_examples: int, who: str = "update") -> None:
        """Fold one update in; it is not retained (the caller may free it at once)."""
        if num_examples < 0:
            raise SchemaError(f"{who} reports {num_examples} examples; expected >= 0")
        if self._spec is None:
            self._spec = spec_of(weights)
        check_compatible(weights, self._spec, who)
        if not self._chunks:
            self._chunks = {t.name: _zero_chunks(int(np.prod(t.shape))) for t in self._spec}
        factor = float(num_examples)
        for name, acc_chunks in self._chunks.items():
            flat = np.ravel(weights[name])
            start = 0
            for chunk in acc_chunks:
                self._fold(chunk, flat[start : start + chunk.size], factor)
                start += chunk.size
        self.total_examples += num_examples
        self.count += 1

    def _fold(self, acc: Array, values: Array, factor: float) -> None:
        """acc += float64(values) * factor, block by block through the scratch."""
        if self._scratch.size < BLOCK_ELEMENTS:
            self._scratch = np.empty(BLOCK_ELEMENTS, dtype=np.float64)
        for lo in range(0, acc.size, BLOCK_ELEMENTS):
            hi = min(lo + BLOCK_ELEMENTS, acc.size)
            scratch = self._scratch[: hi - lo]
            # widen with a plain cast, then multiply in place: numpy's casting multiply
            # (float32 in, float64 out) goes through small buffers and is ~1.5x slower;
            # the products and the sum are the same, bit for bit
            np.copyto(scratch, values[lo:hi])
            np.multiply(scratch, factor, out=scratch)
            np.add(acc[lo:hi], scratch, out=acc[lo:hi])

    def result(self) -> Weights:
        """The weighted mean in the model's dtype; the accumulator is consumed."""
        if self.count == 0 or self._spec is None:
            raise SchemaError(f"{self._who}: no updates to average (empty round)")
        if self.total_examples == 0:
            raise SchemaError(
                f"{self._who}: {self.count} update(s) report 0 examples in total; "
                "FedAvg needs at least one example"
            )
        self._scratch = np.empty(0, dtype=np.float64)
        out: Weights = {}
        for t in self._spec:
            out[t.name] = _finish(self._chunks.pop(t.name), self.total_examples, t.dtype, t.shape)
        return out


def _finish(chunks: list[Array], total: int, dtype: str, shape: tuple[int, ...]) -> Array:
    """Divide and cast chunk by chunk into the result, dropping each float64 chunk at once."""
    out = np.empty(sum(c.size for c in chunks), dtype=np.dtype(dtype))
    start = 0
    while chunks:
        chunk = chunks.pop(0)
        chunk /= total
        out[start : start + chunk.size] = chunk  # the same rounding as astype(dtype)
        start += chunk.size
        del chunk
    return out.reshape(shape)


def _zero_chunks(size: int) -> list[Array]:
    chunks = [
        np.zeros(min(CHUNK_ELEMENTS, size - i), dtype=np.float64)
        for i in range(0, size, CHUNK_ELEMENTS)
    ]
    return chunks or [np.zeros(0, dtype=np.float64)]


def fedavg(
    updates: Iterable[tuple[Mapping[str, Array], int]], spec: ModelSpec | None = None
) -> Weights:
    """FedAvg over an iterable of (weights, num_examples); consumes it lazily."""
    acc = FedAvgAccumulator(spec)
    for i, (weights, n) in enumerate(updates):
        acc.add(weights, n, who=f"update #{i}")
    return acc.result()
