"""The strategy registry: a name in a task config to the class that implements it.

A new strategy is a module with a `SyncStrategy` or `AsyncStrategy` subclass and one
`register(...)` call: in `fedasync.core.strategies.builtin` for one that ships with
fedasync, or, for a package of your own, an entry point in the group
`fedasync.strategies` naming the module (it registers on import). Nothing in the server
changes: it asks `strategy_for(cfg)`. The aggregate Lambda's bundle must contain the
package (infra/bundle.py installs server_lambdas/requirements.txt).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fedasync.core.errors import ConfigError

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig
    from fedasync.core.strategies.base import AsyncStrategy, Strategy, SyncStrategy

ENTRY_POINT_GROUP = "fedasync.strategies"
_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy class under its `name` (usable as a class decorator)."""
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ConfigError(
            f"strategy name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache
def _load() -> None:
    importlib.import_module("fedasync.core.strategies.builtin")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.partition(":")[0])


def registered() -> dict[str, type[Strategy]]:
    _load()
    return dict(_REGISTRY)


def names_for(mode: str) -> tuple[str, ...]:
    """The strategies a task of `mode` may use, the mode's default first."""
    names = [name for name, cls in registered().items() if cls.mode == mode]
    default = DEFAULTS.get(mode)
    return tuple(sorted(names, key=lambda n: (n != default, n)))


DEFAULTS = {"sync": "fedavg", "async": "fedasync"}


def resolve(mode: str, name: str | None, options: dict[str, Any]) -> Strategy:
    """The configured strategy, checked against its mode and options; ValueError (inside
    pydantic validation) names what is allowed."""
    name = name or DEFAULTS[mode]
    cls = registered().get(name)
    if cls is None or cls.mode != mode:
        where = (
            ""
            if cls is None
            else f" (it is {'an' if cls.mode == 'async' else 'a'} {cls.mode} strategy)"
        )
        raise ValueError(
            f"strategy {name!r} does not fit mode {mode!r}{where}; allowed: "
            + ", ".join(repr(s) for s in names_for(mode))
        )
    try:
        return cls.from_config(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
            for err in exc.errors()
        )
        allowed = ", ".join(cls.Options.model_fields) or "none"
        raise ValueError(
            f"strategy_options for {name!r}: {problems} (its options: {allowed})"
        ) from None


def strategy_for(cfg: TaskConfig) -> Strategy:
    return resolve(cfg.mode, cfg.strategy, dict(cfg.strategy_options))


def sync_strategy(cfg: TaskConfig) -> SyncStrategy:
    from fedasync.core.strategies.base import SyncStrategy

    strategy = strategy_for(cfg)
    if not isinstance(strategy, SyncStrategy):
        raise ConfigError(f"task {cfg.task_name!r}: {strategy.name!r} is not a sync strategy")
    return strategy


def async_strategy(cfg: TaskConfig) -> AsyncStrategy:
    from fedasync.core.strategies.base import AsyncStrategy

    strategy = strategy_for(cfg)
    if not isinstance(strategy, AsyncStrategy):
        raise ConfigError(f"task {cfg.task_name!r}: {strategy.name!r} is not an async strategy")
    return strategy
