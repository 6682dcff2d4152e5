"""The task's `update_encoding`: silos upload half-precision deltas instead of float32
models (`fedasync.core.deltas`, which documents the error it costs). Off by default."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


class UpdateEncoding(BaseModel):
    """`{dtype: float16 | bfloat16}`: each update is half(local - global) of its base version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: Literal["float16", "bfloat16"]


def _not_with_secagg(value: UpdateEncoding | None, info: ValidationInfo) -> UpdateEncoding | None:
    if value is not None and info.data.get("secure_aggregation") is not None:
        raise ValueError(
            "update_encoding cannot be combined with secure_aggregation: SecAgg quantises "
            "each update itself (its masked integers are what a silo uploads)"
        )
    return value


# declared after `secure_aggregation` in TaskConfig: the validator reads it
UpdateEncodingField = Annotated[UpdateEncoding | None, AfterValidator(_not_with_secagg)]
