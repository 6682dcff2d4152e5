"""Per-request costs of the moto server that are moto's own bookkeeping, not AWS's work,
cut inside its process (`fedasync.local.moto_process` installs them before it serves).
Each leaves what a request does and answers unchanged: only work that gives the same
result on every request is done once. Stdlib and moto only.
"""

from __future__ import annotations

import functools


def cache_method_names() -> None:
    """moto's dispatcher lists a response class's methods (`inspect.getmembers`, ~200
    members with a predicate each) on every request, to see whether the action is one of
    them: measured at ~1.5 ms of the server's CPU per request of a sync round. A class's
    methods do not change while the server runs; list them once per class."""
    from moto.core import responses

    original = responses.method_names_from_class  # type: ignore[attr-defined]

    @functools.cache
    def names(clazz: type) -> frozenset[str]:
        return frozenset(original(clazz))

    responses.method_names_from_class = names  # type: ignore[attr-defined,assignment]
