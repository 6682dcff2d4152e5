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


def cache_camelcase() -> None:
    """moto turns attribute names from CamelCase to snake_case character by character,
    many times a request: an SQS queue's `attributes` converts each of its ~20 names,
    and the SNS fan-out of one notice reads it for every subscribed queue (one per
    silo). A pure function of a short string from a small set: remember its answers.
    Modules that imported it by name already get the cached one too."""
    import sys

    from moto.core import utils

    original = utils.camelcase_to_underscores
    cached = functools.lru_cache(maxsize=4096)(original)
    utils.camelcase_to_underscores = cached
    for module in list(sys.modules.values()):
        if getattr(module, "camelcase_to_underscores", None) is original:
            setattr(module, "camelcase_to_underscores", cached)  # noqa: B010
