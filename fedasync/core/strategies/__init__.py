"""Aggregation strategies behind one seam: see `base` (what a strategy is) and
`registry` (how a task config names one, and how to add one)."""

from fedasync.core.strategies.base import (
    AsyncStrategy,
    Fold,
    HoldingStrategy,
    NoOptions,
    Strategy,
    SyncStrategy,
)
from fedasync.core.strategies.registry import (
    async_strategy,
    names_for,
    register,
    registered,
    resolve,
    strategy_for,
    sync_strategy,
)

__all__ = [
    "AsyncStrategy",
    "Fold",
    "HoldingStrategy",
    "NoOptions",
    "Strategy",
    "SyncStrategy",
    "async_strategy",
    "names_for",
    "register",
    "registered",
    "resolve",
    "strategy_for",
    "sync_strategy",
]
