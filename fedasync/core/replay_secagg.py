"""Replay of a SecAgg round: rebuilt from the sum the server recorded, not from updates.

A SecAgg round has no individual updates to re-validate: the server learned only the
survivors' unmasked sum, which it stores at `{task}/server/secagg/{r}/sum.safetensors`
with its SHA-256 (`sum_sha256`) and the examples it carries on the round's result. The
replay reads that sum, checks its SHA-256, checks the examples it carries (its last
coordinate, N · step, as the server reads it) and takes the very FedAvg step the server
took (`fedasync.core.secagg.fedavg.fedavg_step`). A missing or altered sum is a problem
with its reason, and the round is not rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.config import TaskConfig
from fedasync.core.errors import FedAsyncError
from fedasync.core.privacy import central_dp
from fedasync.core.secagg.fedavg import fedavg_step
from fedasync.core.secagg.notice import server_key
from fedasync.core.secagg.quantize import Quantizer


def sum_key(task_name: str, round_id: int) -> str:
    """Where the server stored a SecAgg round's unmasked sum."""
    return server_key(task_name, round_id, "sum").replace(".json", ".safetensors")


def release_key(task_name: str, round_id: int) -> str:
    """Where the server stored a central-DP SecAgg round's release (the noised sum)."""
    return server_key(task_name, round_id, "release").replace(".json", ".safetensors")


def secagg_round(
    cfg: TaskConfig,
    event: Mapping[str, Any],
    global_w: Weights,
    load: Callable[[str], bytes],
    problems: list[str],
) -> Weights | None:
    """The round's new global model from its recorded sum; None (a problem said) if the
    sum is missing, altered or not the one the round recorded."""
    sa = cfg.secure_aggregation
    round_id = int(event["round_id"])
    who = f"SecAgg round {round_id}"
    recorded = event.get("secagg")
    if sa is None or not isinstance(recorded, Mapping) or not recorded.get("sum_sha256"):
        problems.append(f"{who}: the round records no SecAgg sum (sum_sha256) to rebuild from")
        return None
    key = sum_key(cfg.task_name, round_id)
    try:
        blob = load(key)
    except (FedAsyncError, KeyError, OSError) as exc:
        problems.append(f"{who}: its sum {key!r} cannot be read ({exc}); the round is not rebuilt")
        return None
    if codec.sha256_bytes(blob) != recorded["sum_sha256"]:
        problems.append(
            f"{who}: its sum {key!r} has SHA-256 {codec.sha256_bytes(blob)}, not the "
            f"{recorded['sum_sha256']} the round recorded: the sum was altered"
        )
        return None
    values = np.asarray(codec.decode(blob, who=key)["sum"], dtype=np.float64)
    step = Quantizer(sa.clip, len(cfg.clients), sa.ring_bits).step
    examples = round(float(values[-1]) / step)
    if examples != int(recorded.get("examples", -1)) or examples < 1:
        problems.append(
            f"{who}: its sum carries {examples} examples; the round recorded "
            f"{recorded.get('examples')}"
        )
        return None
    if central_dp(cfg):
        return _from_release(cfg, recorded, round_id, global_w, load=load, problems=problems)
    return fedavg_step(global_w, values[:-1], examples)


def _from_release(
    cfg: TaskConfig,
    recorded: Mapping[str, Any],
    round_id: int,
    global_w: Weights,
    *,
    load: Callable[[str], bytes],
    problems: list[str],
) -> Weights | None:
    """Central DP: the step on the recorded release (its noise cannot be drawn again)."""
    who, key = f"SecAgg round {round_id}", release_key(cfg.task_name, round_id)
    try:
        blob = load(key)
    except (FedAsyncError, KeyError, OSError) as exc:
        problems.append(f"{who}: its release {key!r} cannot be read ({exc})")
        return None
    if codec.sha256_bytes(blob) != recorded.get("release_sha256"):
        problems.append(
            f"{who}: its release {key!r} is not the one the round recorded "
            f"(release_sha256 {recorded.get('release_sha256')})"
        )
        return None
    values = np.asarray(codec.decode(blob, who=key)["release"], dtype=np.float64)
    return fedavg_step(global_w, values, len(recorded.get("survivors", [])))
