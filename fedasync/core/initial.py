"""The task's initial weights, checked once before anything is created (pure).

The model a task starts from is the user's (`fedasync task start --initial-weights`): its
tensor names, shapes and dtypes become the task's model spec, which every update is then
checked against (`fedasync.core.codec.check_compatible`). So it is judged here as strictly
as an update would be, and more: a model no update could ever match, or that could never
be sent, is refused with what is wrong and where, and no task is created.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedasync import limits
from fedasync.core import codec
from fedasync.core.codec import ACCEPTED_DTYPES, Array
from fedasync.core.config import TaskConfig
from fedasync.core.errors import IncompatibleUpdateError, PayloadTooLargeError, SchemaError
from fedasync.core.streamfold import streamable

MAX_TENSOR_NAME = 512  # characters: a name travels in every header, keep it a name
RESERVED_NAMES = ("__metadata__",)  # safetensors' own header key


def check_initial(weights: Mapping[str, Array], cfg: TaskConfig, who: str) -> int:
    """Names, dtypes, finiteness and encoded size against the task; returns the size."""
    if not weights:
        raise SchemaError(f"{who} has no tensors")
    for name, arr in weights.items():
        if not name or len(name) > MAX_TENSOR_NAME or name in RESERVED_NAMES:
            raise SchemaError(
                f"{who}: tensor name {name[:40]!r} is not usable (1 to {MAX_TENSOR_NAME} "
                f"characters, not {', '.join(RESERVED_NAMES)})",
                reason="names",
            )
        if str(arr.dtype) not in ACCEPTED_DTYPES:
            raise IncompatibleUpdateError(
                f"{who}: tensor {name!r} has dtype {arr.dtype}; a task's model holds "
                f"{', '.join(ACCEPTED_DTYPES)} only (convert it, or leave it out of the model)",
                reason="dtype",
            )
    codec.check_finite(weights, who)
    size = len(codec.encode(weights, who))
    check_size(size, cfg, who)
    return size


def check_size(size: int, cfg: TaskConfig, who: str) -> None:
    """A model over `max_model_bytes` could never be sent: every update would be refused.
    One the deployed aggregate function could not aggregate is refused too."""
    if size > cfg.max_model_bytes:
        raise PayloadTooLargeError(
            f"{who} is {size} bytes as safetensors; task {cfg.task_name!r} allows "
            f"{cfg.max_model_bytes} (max_model_bytes): raise it, or every update would be refused"
        )
    check_aggregatable(size, cfg, who)


def check_aggregatable(size: int, cfg: TaskConfig, who: str) -> None:
    """The model (and `max_model_bytes`, when the config sets it) within what the aggregate
    function can aggregate (`fedasync.limits.AGGREGATE_SIZING`): streamed, a sync FedAvg
    round is bounded by the function's /tmp; any other by its memory, models held whole."""
    sizing = limits.AGGREGATE_SIZING
    if streamable(cfg):
        most = sizing.max_streamed_model_bytes
        how = (
            f"streamed (a sync FedAvg round; the new global is written to its "
            f"{sizing.ephemeral_mb} MB of /tmp)"
        )
    else:
        most = sizing.max_whole_model_bytes
        how = (
            f"holding models whole ({sizing.whole_copies} models in its {sizing.memory_mb} MB, "
            f"beside {sizing.overhead_bytes} bytes of runtime and a {sizing.cache_bytes}-byte "
            "cache; only a sync FedAvg round without central DP, clipping, server optimizer "
            "or max_update_norm is streamed)"
        )
    asked = [(f"{who} is {size} bytes as safetensors", size)]
    if "max_model_bytes" in cfg.model_fields_set:
        asked.append((f"max_model_bytes is {cfg.max_model_bytes}", cfg.max_model_bytes))
    for what, wanted in asked:
        if wanted > most:
            raise PayloadTooLargeError(
                f"task {cfg.task_name!r}: {what}; the aggregate function can aggregate at most "
                f"{most} bytes {how}",
                reason="too_large_to_aggregate",
            )
