"""FedAsync (Xie, Koyejo, Gupta 2019) as an async strategy: every accepted update is
mixed into the head, x <- (1 - a_t) x + a_t x_client, a_t = alpha * s(staleness).

Its knobs are the task's top-level `alpha` and `staleness` fields (kept there since the
first version of the config); it has no `strategy_options` of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from fedasync.core.asyncagg import Absorbed, AsyncState, fedasync_alpha, mix
from fedasync.core.codec import Array, delta_norm
from fedasync.core.globalcheck import check_new_global
from fedasync.core.strategies.base import AsyncStrategy

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig
    from fedasync.core.optimizers import OptimizerState


class FedAsync(AsyncStrategy):
    name: ClassVar[str] = "fedasync"
    summary: ClassVar[str] = "mix each update into the head (Xie et al. 2019)"

    def absorb(
        self,
        state: AsyncState,
        cfg: TaskConfig,
        *,
        global_w: Mapping[str, Array],
        client_w: Mapping[str, Array],
        base_w: Mapping[str, Array] | None,
        buffer_sum: Mapping[str, Array] | None,
        staleness: int,
        who: str,
        server_state: OptimizerState | None = None,
    ) -> Absorbed:
        """Mix the client's model in; the candidate is checked (`check_new_global`) first.

        With `max_update_norm` B and the base model, a legitimate step is at most
        a_t * (B + |x_base - x_head|) long (see `fedasync.core.globalcheck`)."""
        alpha_t = fedasync_alpha(staleness, cfg)
        new_global = mix(global_w, client_w, alpha_t)
        bound = cfg.max_update_norm
        max_step = (
            alpha_t * (bound + delta_norm(base_w, global_w))
            if bound is not None and base_w is not None
            else None
        )
        check_new_global(
            new_global,
            global_w,
            max_step=max_step,
            who=f"{who}: its FedAsync step (alpha_t {alpha_t:.6g})",
        )
        new_state = replace(state, version=state.version + 1, absorbed=state.absorbed + 1)
        return Absorbed(new_state, staleness, alpha_t, new_global=new_global)
