"""Tolerant readers of one attribute value (an item may hold what an older build, or a
silo, wrote): each returns the typed value or the fallback, never raises."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def int_or(value: Any, default: int | None = None) -> int | None:
    """An integer the server wrote (an integral float too), else `default`."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return default


def float_or(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if math.isfinite(value) else default


def str_or_none(value: Any) -> str | None:
    """A non-empty string, else None (an empty attribute means unset, as readers had it)."""
    return str(value) if value else None


def strings(value: Any) -> tuple[str, ...]:
    """A list or string set of strings, in the order stored (None, absent: empty)."""
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        return ()
    return tuple(str(v) for v in value)
