"""A SecAgg round's last phase: unmask the survivors' sum and take the FedAvg step on it.

Each silo u sends x_u = (n_u · Δ_u, n_u · step): its delta against the round's global
model weighted by its example count, and the count itself as one more coordinate, scaled
so that it quantises to exactly n_u (`step` = clip / Q). The unmasked sum is therefore
(Σ n_u Δ_u, N = Σ n_u) over U3, and the new global model is

    w_{r+1} = w_r + Σ n_u Δ_u / N,

which is FedAvg (Σ n_u w_u / N with w_u = w_r + Δ_u), within the quantisation error
|U3| · step / 2 / N per coordinate (plus the clipping of n_u Δ_u to [-clip, clip]). The
sum (float64, the only unmasked vector) is stored under the server's prefix and its
SHA-256 is recorded in the round's result, the ledger's source: the sum, not the inputs,
is what a replay can rebuild the round from.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import structlog

from fedasync.core import codec, keys
from fedasync.core.errors import RegistryError
from fedasync.core.noise import SecureGaussian
from fedasync.core.privacy import central_dp
from fedasync.core.replay_secagg import release_key, sum_key
from fedasync.core.secagg.central_dp import details as dp_details
from fedasync.core.secagg.central_dp import release
from fedasync.core.secagg.errors import TAMPERED, SecAggError
from fedasync.core.secagg.fedavg import fedavg_step
from fedasync.core.secagg.server import UnmaskResult, unmask_sum
from fedasync.server.finish import finish_task
from fedasync.server.round_budget import budget_spent, spent_budget
from fedasync.server.round_fold import server_step, store_version
from fedasync.server.secagg_decide import Answers, failed_cause, roster_of, unmaskings
from fedasync.server.secagg_io import RoundSetup, get_decision, get_masked_sum, input_length
from fedasync.server.store import ServerStore
from fedasync.server.stored import load_model
from fedasync.server.task_view import TaskView

log = structlog.get_logger()


async def close_round(
    store: ServerStore, view: TaskView, s: RoundSetup, answers: Answers, round_id: int
) -> dict[str, Any]:
    item = await store.get_item(view.task_name, keys.round_sk(round_id)) or {}
    if item.get("closed") and item.get("result"):
        return dict(item["result"])
    decided = {
        p: await get_decision(store, view.task_name, round_id, f"closed-{p}")
        for p in ("advertise_keys", "share_keys", "masked_input", "consistency")
    }
    messages, rejected = unmaskings(answers)
    try:
        chosen = decided["masked_input"]
        masked_sum = await get_masked_sum(store, view.task_name, s, chosen["masked_sum"])
        if masked_sum is None or masked_sum.shape != (input_length(view),):
            raise SecAggError(
                f"the masked sum of round {round_id} is missing or altered", reason=TAMPERED
            )
        result = unmask_sum(
            s.ctx,
            quantizer=s.quantizer,
            roster=roster_of(decided["advertise_keys"]),
            u2=frozenset(decided["share_keys"]["members"]),
            u3=frozenset(chosen["members"]),
            masked_sum=masked_sum,
            unmaskings=messages,
            identities=s.identities,
        )
    except SecAggError as exc:
        cause = failed_cause(view.task_name, round_id, "unmask", exc)
        return {"closed": False, "round_id": round_id, "cause": cause, "rejected": rejected}
    for holder, reason in sorted(result.rejected.items()):
        log.warning("secagg.bad_share", reason=reason, culprit=holder)
    rejected.update(result.rejected)
    return await _commit(store, view, s, round_id=round_id, result=result, rejected=rejected)


async def _commit(
    store: ServerStore,
    view: TaskView,
    s: RoundSetup,
    *,
    round_id: int,
    result: UnmaskResult,
    rejected: dict[str, str],
) -> dict[str, Any]:
    name, who = view.task_name, f"round {round_id} of task {view.task_name!r}"
    examples = round(float(result.values[-1]) / s.quantizer.step)
    secagg: dict[str, Any] = {
        "survivors": list(result.survivors),
        "dropped": list(result.dropped),
        "rejected": rejected,
        "examples": examples,
    }
    if examples < 1:
        cause = f"secagg: round {round_id} of task {name!r}: the survivors hold no examples"
        return {"closed": False, "round_id": round_id, "cause": cause, "secagg": secagg}
    central = central_dp(view.cfg)
    if central and view.dp_release_limit is not None and view.dp_releases >= view.dp_release_limit:
        return await budget_spent(store, view, round_id)
    total = codec.encode({"sum": np.asarray(result.values, dtype=np.float64)})
    secagg["sum_sha256"] = codec.sha256_bytes(total)
    await store.put_object(sum_key(name, round_id), total, secagg["sum_sha256"])
    global_w = await load_model(store, keys.global_key(name, round_id), view.head_sha256, who)
    task_values: dict[str, Any] = {}
    dp: dict[str, Any] = {}
    privacy = view.cfg.privacy
    if central and privacy is not None:  # one release: Σ clip(Δ_u) + N(0, (zC)²), over m
        values, secagg["release_sha256"] = await _release(store, view, round_id, result)
        candidate = fedavg_step(global_w, values, len(result.survivors))
        task_values["dp_releases"] = view.dp_releases + 1
        dp = {"dp": {**dp_details(privacy, len(result.survivors)),
                     "releases": view.dp_releases + 1}, **spent_budget(view)}  # fmt: skip
    else:
        candidate = fedavg_step(global_w, result.values[:-1], examples)
    candidate, stepped = await server_step(store, view, round_id, candidate)
    new_version = round_id + 1
    blob, sha = await store_version(store, view, new_version, codec.encode(candidate))
    out = {
        "closed": True,
        "round_id": round_id,
        "version": new_version,
        "accepted": len(result.survivors),
        "sha256": sha,
        "secagg": secagg,
        **dp,
        **stepped,
    }
    committed = await store.transact(
        [
            store.update_op(
                name,
                keys.TASK_SK,
                {
                    "head_version": new_version,
                    "head_sha256": sha,
                    "head_size": len(blob),
                    **task_values,
                    **stepped,
                },
                condition="#head_version = :expected AND attribute_not_exists(#finished)",
                condition_values={":expected": round_id},
            ),
            store.update_op(
                name,
                keys.round_sk(round_id),
                {"closed": True, "result": out, "closed_at": time.time()},
            ),
        ]
    )
    if not committed:
        item = await store.get_item(name, keys.round_sk(round_id)) or {}
        return dict(
            item.get("result")
            or {"closed": False, "round_id": round_id, "cause": f"{who} was not committed"}
        )
    log.info(
        "secagg.round_closed", version=new_version, survivors=len(result.survivors), sha256=sha
    )
    if out.get("finished"):  # the release spent the DP budget (as a plain DP round)
        await finish_task(store, name, "privacy_budget", token=None)
    elif new_version >= view.cfg.rounds:
        await finish_task(store, name, "rounds", token=None)
    return out


async def _release(
    store: ServerStore, view: TaskView, round_id: int, result: UnmaskResult
) -> tuple[np.ndarray, str]:
    """The noised sum of the survivors' clipped deltas, made once: fresh noise on every
    try, so the first try's release is written once (S3's conditional write) and a retry
    takes that one; its SHA-256 goes on the round's result (replay steps on it)."""
    privacy = view.cfg.privacy
    assert privacy is not None  # central_dp(view.cfg)
    noised = release(result.values[:-1], privacy, SecureGaussian())
    blob = codec.encode({"release": noised})
    key = release_key(view.task_name, round_id)
    stored, sha = await store.put_object_once(key, blob, codec.sha256_bytes(blob))
    values = np.asarray(codec.decode(stored, who=key)["release"], dtype=np.float64)
    if values.shape != noised.shape:
        raise RegistryError(f"the stored release {key!r} is not this round's")
    return values, sha
