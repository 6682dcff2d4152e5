"""The FedAvg step a SecAgg round takes on its unmasked sum: one definition, used by the
server when the round closes (fedasync/server/secagg_close.py) and by `fedasync replay`
when it rebuilds the round from the recorded sum (fedasync/core/replay_secagg.py)."""

from __future__ import annotations

import math

import numpy as np

from fedasync.core import codec


def fedavg_step(global_w: codec.Weights, values: np.ndarray, examples: int) -> codec.Weights:
    """w + Σ n_u Δ_u / N, tensor by tensor in the model's order, in its dtypes."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, tensor in global_w.items():
        size = math.prod(tensor.shape)
        mean = values[offset : offset + size].reshape(tensor.shape) / examples
        out[name] = (tensor.astype(np.float64) + mean).astype(tensor.dtype)
        offset += size
    return out
