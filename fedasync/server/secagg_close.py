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

import json
import time
from typing import Any

import numpy as np
import structlog

from fedasync.core import codec, keys
from fedasync.core.errors import RegistryError
from fedasync.core.secagg import wire
from fedasync.core.secagg.errors import TAMPERED, SecAggError
from fedasync.core.secagg.fedavg import fedavg_step
from fedasync.core.secagg.messages import MaskedInput
from fedasync.core.secagg.notice import answer_key, server_key
from fedasync.core.secagg.quantize import RingVector
from fedasync.core.secagg.server import UnmaskResult, unmask
from fedasync.server.finish import finish_task
from fedasync.server.round_fold import server_step, store_version
from fedasync.server.secagg_decide import Answers, failed_cause, roster_of, unmaskings
from fedasync.server.secagg_io import RoundSetup, get_decision, max_answer_bytes
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
        masked = await _masked(store, view, s, decided["masked_input"])
        result = unmask(
            s.ctx,
            quantizer=s.quantizer,
            roster=roster_of(decided["advertise_keys"]),
            u2=frozenset(decided["share_keys"]["members"]),
            masked=masked,
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


async def _masked(
    store: ServerStore, view: TaskView, s: RoundSetup, decided: dict[str, Any]
) -> dict[str, RingVector]:
    """U3's masked inputs, each the bytes the server accepted (a silo cannot swap one in
    after its phase closed: the masks would not cancel)."""
    out: dict[str, RingVector] = {}
    for client_id, sha in sorted(decided["sha256"].items()):
        key = answer_key(view.task_name, s.ctx.round_id, "masked_input", client_id)
        try:
            raw = await store.get_object(key, max_answer_bytes(view, s))
        except RegistryError:
            raw = b""
        message = wire.decode(json.loads(raw)) if codec.sha256_bytes(raw) == sha else None
        if not isinstance(message, MaskedInput):
            raise SecAggError(
                f"the masked input of silo {client_id!r} changed after it was accepted",
                reason=TAMPERED,
                culprit=client_id,
            )
        out[client_id] = message.vector
    return out


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
    secagg = {
        "survivors": list(result.survivors),
        "dropped": list(result.dropped),
        "rejected": rejected,
        "examples": examples,
    }
    if examples < 1:
        cause = f"secagg: round {round_id} of task {name!r}: the survivors hold no examples"
        return {"closed": False, "round_id": round_id, "cause": cause, "secagg": secagg}
    total = codec.encode({"sum": np.asarray(result.values, dtype=np.float64)})
    sum_sha = codec.sha256_bytes(total)
    await store.put_object(
        server_key(name, round_id, "sum").replace(".json", ".safetensors"), total, sum_sha
    )
    global_w = await load_model(store, keys.global_key(name, round_id), view.head_sha256, who)
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
        "secagg": {**secagg, "sum_sha256": sum_sha},
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
    if new_version >= view.cfg.rounds:
        await finish_task(store, name, "rounds", token=None)
    return out
