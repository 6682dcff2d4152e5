"""What a silo writes for upload: its local model, or, with the task's `update_encoding`,
its delta against the global model it trained from in float16 / bfloat16 (half the
bytes; `fedasync.core.deltas` documents the rounding error and how the server reads it).

The delta is taken after local DP (what leaves the silo is the noised model's delta), in
float64, rounded once; the SHA-256 on the record is that of the file as written, the very
bytes sent. A delta beyond the half type's range is refused before anything is written
(`DeltaOverflowError`, logged `client.delta_overflow`): the run stops, nothing is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.deltas import DeltaOverflowError, make_delta, write_delta_file
from fedasync.core.messages import GlobalModelNotice

if TYPE_CHECKING:
    from client.state import RunState

log = structlog.get_logger()


def write_delta(
    trained: Weights, global_w: Weights, path: Path, notice: GlobalModelNotice
) -> tuple[str, str]:
    """half(trained - global_w) written to `path`; (its SHA-256, the delta dtype)."""
    assert notice.update_encoding is not None
    dtype = notice.update_encoding.dtype
    delta = make_delta(trained, global_w, dtype, f"update on v{notice.version}")
    return write_delta_file(delta, path, notice.version, dtype), dtype


async def write_upload(
    state: RunState, notice: GlobalModelNotice, global_w: Weights, trained: Weights, path: Path
) -> tuple[str, str | None]:
    """Write the update to `path`: (its SHA-256, its `delta_dtype`, None for a full model)."""
    if notice.update_encoding is None:
        who = f"local model v{notice.version}"
        return await asyncio.to_thread(codec.write_file, trained, path, who), None
    try:
        return await state.in_compute(write_delta, trained, global_w, path, notice)
    except DeltaOverflowError as exc:
        log.error("client.delta_overflow", reason=exc.message)
        raise
