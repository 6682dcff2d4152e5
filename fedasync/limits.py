"""Each server Lambda function's timeout and memory size, and how the aggregate function
sizes its reads and the models it takes (`AGGREGATE_SIZING`): one definition, two readers.

The CDK app (`infra/server.py`) deploys the functions with these numbers, and the
embedded stack's pumps (`fedasync.local.invoke`) cut off an invocation that passes them,
as Lambda does. Pure data: no CDK, no boto.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedasync.resources import CONTROL_TIMEOUT_S


@dataclass(frozen=True)
class FunctionLimits:
    """Lambda's `Timeout` (seconds) and `MemorySize` (MB) of one function."""

    timeout_s: float
    memory_mb: int

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb <= 0:
            raise ValueError(f"function limits must be positive, got {self}")


# aggregate: a streaming FedAvg over a round's updates may read every silo's model, and
# reserved concurrency 1 makes it the one worker of every task; 10 minutes, 3008 MB.
AGGREGATE_LIMITS = FunctionLimits(timeout_s=600, memory_mb=3008)
# control: short bookkeeping; its timeout sets the control queue's visibility (x6).
CONTROL_LIMITS = FunctionLimits(timeout_s=CONTROL_TIMEOUT_S, memory_mb=1024)
# A function this module does not name (a test's own handler): Lambda's maxima.
LAMBDA_MAX_LIMITS = FunctionLimits(timeout_s=900, memory_mb=10240)

FUNCTION_LIMITS: dict[str, FunctionLimits] = {
    "aggregate": AGGREGATE_LIMITS,
    "control": CONTROL_LIMITS,
}


def limits_for(function: str) -> FunctionLimits:
    """The deployed limits of `function` (`aggregate`, `control`), else Lambda's maxima."""
    return FUNCTION_LIMITS.get(function, LAMBDA_MAX_LIMITS)


MiB = 1024 * 1024


@dataclass(frozen=True)
class AggregateSizing:
    """How the aggregate function reads, holds and writes models, from its limits.

    - `chunk_bytes`, `read_ahead`: a streamed round (`fedasync.server.streamed_round`)
      reads each update by ranged GETs of at most `chunk_bytes`, `read_ahead` in flight,
      and holds one float64 sum of a chunk: its peak is about
      `(read_ahead + 3) * chunk_bytes` (reads in flight, the float64 sum of a float32
      chunk, its cast) plus `overhead_bytes`, whatever the model's size and N.
    - `cache_bytes`: decoded models a warm container keeps (`fedasync.server.cache`),
      and the size up to which an update is validated whole (and cached) at its verdict;
      larger ones are validated streamed.
    - `whole_copies`: what a round that holds models whole costs, in models (robust
      rules, central DP, server optimizers, clipping, `max_update_norm`, async: the
      global, the update, the result, their float64 sum and the encoded bytes).
    - `spill_bytes`: the function's ephemeral storage (/tmp), where a streamed round
      writes the new global before its multipart upload.
    """

    memory_mb: int
    ephemeral_mb: int
    chunk_bytes: int = 8 * MiB
    read_ahead: int = 2
    part_bytes: int = 8 * MiB  # the new global's multipart parts (S3: >= 5 MiB but the last)
    overhead_bytes: int = 256 * MiB  # the runtime, the interpreter and its modules
    whole_copies: int = 12  # issue 18's measure of the whole-object path, sync

    @property
    def streamed_peak_bytes(self) -> int:
        return self.overhead_bytes + (self.read_ahead + 3) * self.chunk_bytes

    @property
    def cache_bytes(self) -> int:
        """An eighth of what the function has beyond a streamed round's own peak."""
        return max(0, (self.memory_mb * MiB - self.streamed_peak_bytes) // 8)

    @property
    def whole_check_bytes(self) -> int:
        """Up to this size an update is checked whole at its verdict and cached (4 fit)."""
        return self.cache_bytes // 4

    @property
    def max_streamed_model_bytes(self) -> int:
        """The largest model a streamed FedAvg round can write (it is spilled to /tmp)."""
        return self.ephemeral_mb * MiB - 64 * MiB  # room for the handler's other files

    @property
    def max_whole_model_bytes(self) -> int:
        """The largest model a round that holds models whole fits in memory with (beside
        the cache a warm container keeps)."""
        room = self.memory_mb * MiB - self.overhead_bytes - self.cache_bytes
        return max(0, room) // self.whole_copies


# Lambda's ephemeral storage (/tmp) of every server function (infra/server.py deploys it).
EPHEMERAL_MB = 2048
AGGREGATE_SIZING = AggregateSizing(memory_mb=AGGREGATE_LIMITS.memory_mb, ephemeral_mb=EPHEMERAL_MB)
