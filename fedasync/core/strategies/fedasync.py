"""FedAsync (Xie, Koyejo, Gupta 2019) as an async strategy: every accepted update is
mixed into the head, x <- (1 - a_t) x + a_t x_client, a_t = alpha * s(staleness).

Its knobs are the task's top-level `alpha` and `staleness` fields (kept there since the
first version of the config); it has no `strategy_options` of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedasync.core.asyncagg import Absorbed, AsyncState, fedasync_alpha, mix
from fedasync.core.clipping import clip_update
from fedasync.core.codec import Array, delta_norm
from fedasync.core.errors import SchemaError
from fedasync.core.globalcheck import check_new_global
from fedasync.core.noise import add_noise
from fedasync.core.privacy import PrivacyConfig, noise_std
from fedasync.core.strategies.base import AsyncStrategy

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig
    from fedasync.core.noise import SecureGaussian
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
        noise: SecureGaussian | None = None,
    ) -> Absorbed:
        """Mix the client's model in; the candidate is checked (`check_new_global`) first.

        With `max_update_norm` B and the base model, a legitimate step is at most
        a_t * (B + |x_base - x_head|) long (see `fedasync.core.globalcheck`)."""
        alpha_t = fedasync_alpha(staleness, cfg)
        privacy = cfg.privacy
        if privacy is not None and privacy.mode == "central":
            client_w = private_model(client_w, base_w, privacy, noise, who)
        new_global = mix(global_w, client_w, alpha_t)
        bound = cfg.max_update_norm
        max_step = (
            alpha_t * (bound + delta_norm(base_w, global_w))
            if bound is not None and base_w is not None and privacy is None
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


def private_model(
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array] | None,
    privacy: PrivacyConfig,
    noise: SecureGaussian | None,
    who: str,
) -> dict[str, Array]:
    """Central DP for one FedAsync release: x_base + clip_C(x_client - x_base) +
    N(0, (z·C)²), in float64. Mixed in with alpha_t, the release's sensitivity to the silo
    is alpha_t·C and its noise alpha_t·z·C: noise multiplier z (fedasync.core.sensitivity).
    The noise comes from the caller's `SecureGaussian` (built at the edge)."""
    if base_w is None or noise is None:
        raise SchemaError(f"{who}: central DP needs the update's base model and a noise source")
    delta = {
        name: np.asarray(x, dtype=np.float64) - np.asarray(base_w[name], dtype=np.float64)
        for name, x in client_w.items()
    }
    clipped, _ = clip_update(delta, privacy.clip_norm)  # the norm before is not kept
    noised = add_noise(clipped, noise_std(privacy.clip_norm, privacy.noise_multiplier), noise)
    return {name: np.asarray(base_w[name], dtype=np.float64) + noised[name] for name in client_w}
