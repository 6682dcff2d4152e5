"""The last check before a new global model is committed, in every mode (pure).

Every update is checked (finite, within `max_update_norm` of its base) before it is
aggregated, but an aggregate of good updates can still be bad: a FedBuff step
x + eta * mean(delta) overflows float32 (or float16) with a large `server_lr` and large
deltas, and a bug anywhere in the arithmetic would reach the global model unseen. So
the candidate itself is checked: finite, and, when the task bounds updates, no further
from the head than the strategy could legitimately move it with updates inside that
bound (FedAvg: a weighted mean of moves within B is within B; FedBuff: eta * B;
FedAsync: a_t * (B + |x_base - x_head|), the client's move plus the head's drift since
its base, scaled by the mixing weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedasync.core.codec import Array, delta_norm
from fedasync.core.errors import GlobalRefusedError

# a step within the bound can exceed it by the rounding of the model's dtype, no more
_RELATIVE_SLACK = 1e-9


def _rounding(weights: Mapping[str, Array]) -> float:
    """An upper bound on the L2 norm of the error casting to each tensor's dtype adds."""
    total = 0.0
    for arr in weights.values():
        eps = float(np.finfo(arr.dtype).eps) if np.issubdtype(arr.dtype, np.floating) else 0.0
        flat = arr.astype(np.float64).ravel()
        total += eps * eps * float(np.dot(flat, flat))
    return math.sqrt(total)


def check_new_global(
    new_global: Mapping[str, Array],
    head: Mapping[str, Array],
    *,
    max_step: float | None,
    who: str,
    discarded: int = 0,
) -> None:
    """Refuse a candidate global model that is not finite or moves beyond `max_step`.

    `who` says what produced it (the update, the round); `discarded`: see
    `GlobalRefusedError.discarded`."""
    outcome = "refused, the head stays" + (
        f" and the {discarded} update(s) buffered with it are dropped" if discarded else ""
    )
    for name, arr in new_global.items():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise GlobalRefusedError(
                f"{who} would make a global model with {bad} NaN/Inf value(s) in tensor "
                f"{name!r}; {outcome}",
                reason="global_non_finite",
                discarded=discarded,
            )
    if max_step is None:
        return
    step = delta_norm(new_global, head)
    allowed = max_step * (1.0 + _RELATIVE_SLACK) + _rounding(new_global)
    if not step <= allowed:
        raise GlobalRefusedError(
            f"{who} would move the global model by L2 norm {step:.6g}; updates within the "
            f"task's max_update_norm can move it by at most {max_step:.6g}; {outcome}",
            reason="global_norm",
            discarded=discarded,
        )
