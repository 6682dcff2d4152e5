"""Each server Lambda function's timeout and memory size: one definition, two readers.

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
