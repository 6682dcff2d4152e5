"""FedBuff (Nguyen et al. 2022) as an async strategy: buffer weighted client deltas and
take a server step once `buffer_size` (K) are in.

D_i = x_client - x_base, weighted by w_i = 1 / sqrt(1 + staleness_i). At K buffered, the
server steps x <- x + eta * sum_i w_i D_i / N, with the normaliser N chosen by the
strategy option `normalize`:

- `k` (the default): N = K, as the paper's Algorithm 1 does. Stale updates shrink the
  whole step (a buffer of stale deltas moves the model less).
- `weights`: N = sum_i w_i (fedasync before 0.3). Staleness only re-weights updates
  *within* a buffer and eta keeps its meaning as a step on an average delta.

With fresh updates (all w_i = 1) both are the same, and with eta = 1 one buffer step lands
on the mean of the client models, like a FedAvg round with equal weights. FLSim's FedBuff
sums w_i D_i unnormalised, with w_i normalised at the average staleness; neither option is
exactly that. Very stale updates are kept out by `max_staleness`.

Its other knobs are the task's top-level `buffer_size` (K) and `server_lr` (eta).

Central DP (`privacy.mode: central`): one Gaussian release per flush. Each delta is
clipped to C before it is weighted into the buffer, a silo has at most one update per
buffer (`asyncagg.absorb` rejects a second one), so with w_i <= 1 the buffered sum's L2
sensitivity to one silo is C * w_max (w_max: the buffer's largest weight) and the flush
adds N(0, (z * C * w_max)^2) to the sum before the step; dividing by K or sum w
(public: who took part and their staleness are recorded) is post-processing
(`fedasync.core.sensitivity.fedbuff_release`). The buffer in S3 holds clipped deltas
only; the noise lives in the released version alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedasync.core.asyncagg import Absorbed, AsyncState, as_dtype, fedbuff_weight
from fedasync.core.clipping import clip_update
from fedasync.core.codec import Array, Weights
from fedasync.core.errors import SchemaError
from fedasync.core.globalcheck import check_new_global
from fedasync.core.noise import add_noise
from fedasync.core.privacy import PrivacyConfig, central_dp, noise_std
from fedasync.core.strategies.base import AsyncStrategy

if TYPE_CHECKING:
    from fedasync.core.config import TaskConfig
    from fedasync.core.noise import SecureGaussian
    from fedasync.core.optimizers import OptimizerState


class FedBuffOptions(BaseModel):
    """`strategy_options` of FedBuff."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalize: Literal["k", "weights"] = "k"


class FedBuff(AsyncStrategy):
    name: ClassVar[str] = "fedbuff"
    summary: ClassVar[str] = "buffer K staleness-weighted deltas, then step (Nguyen et al. 2022)"
    needs_base: ClassVar[bool] = True
    Options: ClassVar[type[BaseModel]] = FedBuffOptions

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
        """Add w * (x_client - x_base) to the buffer; at K buffered, take the server step.

        The step is checked (`check_new_global`; at most server_lr * max_update_norm
        long): refused, it raises `GlobalRefusedError` naming the buffered updates it
        drops."""
        if base_w is None:
            raise SchemaError(f"{who}: FedBuff needs the update's base version model")
        if state.buffered and buffer_sum is None:
            raise SchemaError(
                f"FedBuff state has {state.buffered} buffered deltas but no buffer sum"
            )
        w = fedbuff_weight(staleness)
        privacy = cfg.privacy if central_dp(cfg) else None
        summed = _add_delta(
            client_w,
            base_w,
            w,
            buffer_sum if state.buffered else None,
            clip=privacy.clip_norm if privacy is not None else None,
        )
        buffered, weight_sum = state.buffered + 1, state.buffer_weight + w
        w_max = max(state.buffer_max_weight, w) if state.buffered else w
        if buffered < cfg.buffer_size:
            new_state = replace(
                state,
                absorbed=state.absorbed + 1,
                buffered=buffered,
                buffer_weight=weight_sum,
                buffer_max_weight=w_max if privacy is not None else 0.0,
            )
            return Absorbed(new_state, staleness, w, buffer_sum=summed)
        if privacy is not None:
            summed = _noised(summed, privacy, w_max, noise, who)
        normalize = getattr(self.options, "normalize", "k")
        divisor = buffered if normalize == "k" else weight_sum
        new_global, server_state = _step(cfg, global_w, summed, divisor, server_state)
        bound = cfg.max_update_norm
        stepped_by = (
            f"server optimizer {cfg.server_optimizer.kind}"
            if cfg.server_optimizer is not None
            else f"server_lr {cfg.server_lr:g}"
        )
        check_new_global(
            new_global,
            global_w,
            max_step=(
                cfg.server_lr * bound
                if bound is not None and cfg.server_optimizer is None and privacy is None
                else None
            ),
            who=f"{who}: the FedBuff step of {buffered} buffered update(s) ({stepped_by})",
            discarded=state.buffered,
        )
        new_state = AsyncState(version=state.version + 1, absorbed=state.absorbed + 1)
        return Absorbed(new_state, staleness, w, new_global=new_global, server_state=server_state)


def _step(
    cfg: TaskConfig,
    global_w: Mapping[str, Array],
    summed: Mapping[str, Array],
    divisor: float,
    server_state: OptimizerState | None,
) -> tuple[Weights, OptimizerState | None]:
    """The server step on the buffered delta sum / divisor: x + eta * that, or, with a
    server optimizer, its step on that pseudo-gradient (as FLSim's FedBuff does; eta is
    then the optimizer's lr)."""
    if cfg.server_optimizer is not None:
        # in float64 (the optimizer's own precision): the pseudo-gradient is exactly
        # the buffered mean delta, not its rounding to the model's dtype
        x64 = {name: x.astype(np.float64) for name, x in global_w.items()}
        aggregate = {name: x + summed[name] / divisor for name, x in x64.items()}
        stepped, new_state = cfg.server_optimizer.step(x64, aggregate, server_state)
        return {n: as_dtype(v, global_w[n].dtype) for n, v in stepped.items()}, new_state
    step = cfg.server_lr / divisor
    new_global: Weights = {}
    for name, x in global_w.items():
        new_global[name] = as_dtype(x.astype(np.float64) + step * summed[name], x.dtype)
    return new_global, None


def _noised(
    summed: Mapping[str, Array],
    privacy: PrivacyConfig,
    w_max: float,
    noise: SecureGaussian | None,
    who: str,
) -> Weights:
    """The buffered sum of weighted clipped deltas + N(0, (z * C * w_max)^2): one release.
    The noise is drawn from the caller's `SecureGaussian` (a fresh key, built at the edge)
    and is never returned apart from the sum."""
    if noise is None:
        raise SchemaError(f"{who}: central DP's FedBuff flush needs a noise source")
    std = noise_std(privacy.clip_norm, privacy.noise_multiplier) * w_max
    return add_noise(summed, std, noise)


def _add_delta(
    client_w: Mapping[str, Array],
    base_w: Mapping[str, Array],
    w: float,
    buffer_sum: Mapping[str, Array] | None,
    *,
    clip: float | None = None,
) -> Weights:
    """buffer + w * (x_client - x_base), in float64; with `clip` (central DP), the delta
    is clipped to that L2 norm over the whole model first (its norm is not kept)."""
    deltas: Mapping[str, Array] | None = None
    if clip is not None:  # the clip needs the whole delta; without one, a tensor at a time
        deltas, _ = clip_update(_delta(client_w, base_w), clip)
    summed: Weights = {}
    for name in client_w:
        delta = (
            _delta({name: client_w[name]}, base_w)[name]
            if deltas is None
            else np.array(deltas[name], dtype=np.float64)
        )
        delta *= w
        if buffer_sum is not None:
            delta += buffer_sum[name]
        summed[name] = delta
    return summed


def _delta(client_w: Mapping[str, Array], base_w: Mapping[str, Array]) -> Weights:
    """x_client - x_base per tensor, in float64."""
    return {
        name: as_dtype(x.astype(np.float64) - base_w[name].astype(np.float64), np.dtype(np.float64))
        for name, x in client_w.items()
    }
