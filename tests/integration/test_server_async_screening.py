"""Async tasks on the embedded stack with robust screening (issue 15, item 3): the outlier
filter rejects a 100x update with its reason, and clip_update_norm absorbs a long update
clipped; every head by hand, and replay rebuilds the same bytes."""

from __future__ import annotations

import math

import numpy as np
from structlog.testing import capture_logs

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger
from fedasync.server.tasks import start_task
from tests.integration.test_server_async import (
    CLIENTS,
    first_notice,
    go_ahead,
    head,
    make_stack,
    mix,
    verdict,
)
from tests.integration.test_server_sync import clients_for, initial_model, store_for, wait_execution


def _moved(x: dict[str, np.ndarray], step: float) -> dict[str, np.ndarray]:
    """x + step on every element, in float32: a client's model of delta ~ step x ones."""
    return {k: (v.astype(np.float64) + step).astype(np.float32) for k, v in x.items()}


def _norm(client: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> float:
    """The delta's L2 norm, the oracle: numpy over the concatenated float64 difference."""
    flat = np.concatenate(
        [(client[k].astype(np.float64) - base[k].astype(np.float64)).ravel() for k in base]
    )
    return float(np.linalg.norm(flat))


async def _replayed(store, task: str):
    ledger = await export_ledger(store, task)
    blobs = {}
    for event in ledger:
        if event["kind"] == "task":
            blobs[event["initial"]["s3_key"]] = await store.get_object(event["initial"]["s3_key"])
        elif event["kind"] == "update":
            key = event["record"]["s3_key"]
            blobs[key] = await store.get_object(key)
    return ledger, replay(ledger, blobs.__getitem__), blobs


async def test_a_100x_update_is_rejected_as_outlier_and_the_head_stays(
    moto_server, prefix, wait_until
):
    # GIVEN a FedAsync task (alpha 0.5) with the default outlier filter (k 4.5, 5 norms
    # of history, window 20) and 6 versions to make
    cfg = TaskConfig.parse(
        {
            "task_name": "outl",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_versions": 6,
            "outlier_filter": {},
        }
    )
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, _ = clients_for(stack, CLIENTS, (5, 5, 5))
        nb0 = await first_notice(b)
        # WHEN silo a sends 5 honest updates of similar norm, each on the head before it
        x = [initial_model()]
        norms = []
        notice = await first_notice(a)
        for version, step in enumerate((0.10, 0.11, 0.09, 0.10, 0.12)):
            mine = _moved(x[-1], step)
            await a.submit(notice, mine)
            norms.append(_norm(mine, x[-1]))
            x.append(mix(x[-1], mine, 0.5))
            await head(store, "outl", wait_until, version + 1)
            notice = await go_ahead(a, version)
        # AND then one 100x as long (step 10, on version 5)
        assert notice.version == 5
        sk = keys.update_sk("a", "a-v00000005", None)
        with capture_logs() as logs:
            await a.submit(notice, _moved(x[5], 10.0))
            rejected = await verdict(store, "outl", sk, wait_until)
        # THEN it is rejected with reason 'outlier': its norm 10 x sqrt(15) against the
        # limit median + 4.5 x MAD of the 5 accepted (about 0.1 x sqrt(15) each), and the
        # rejection is logged with its reason and detail
        assert (rejected["verdict"], rejected["reason"]) == ("rejected", "outlier")
        assert f"outlier: delta norm {10 * math.sqrt(15):.6g} > " in rejected["detail"]
        assert "of the last 5 accepted" in rejected["detail"]
        logged = [e for e in logs if e["event"] == "update.rejected"]
        assert [(e["reason"], e["detail"]) for e in logged] == [("outlier", rejected["detail"])]
        # AND the head is unchanged by it: version 5, its bytes FedAsync's by hand, no v6
        task = await store.get_task("outl")
        assert (task["head_version"], task["absorbed"]) == (5, 5)
        got = codec.decode(await store.get_object(keys.global_key("outl", 5)))
        for name in x[5]:
            np.testing.assert_array_equal(got[name], x[5][name])
        # AND the window on the TASK item holds the 5 accepted delta norms, oldest first
        np.testing.assert_allclose(task["recent_norms"], norms, rtol=1e-12)
        # AND an honest update from b (base 0, staleness 5) is accepted and ends the task
        mine = _moved(x[0], 0.1)
        await b.submit(nb0, mine)
        desc = await wait_execution(stack, arn)
        assert desc["status"] == "SUCCEEDED"
        x6 = mix(x[5], mine, 0.5)
        final = codec.decode(await store.get_object(keys.final_key("outl")))
        for name in x6:
            np.testing.assert_array_equal(final[name], x6[name])
        # AND the ledger says the same, and replay rebuilds every version byte for byte
        ledger, result, blobs = await _replayed(store, "outl")
    event = next(e for e in ledger if e["kind"] == "update" and e["sk"] == sk)
    assert (event["verdict"], event["reason"], event["seq"]) == ("rejected", "outlier", None)
    assert result.ok, (result.problems, result.mismatches)
    assert (result.final_version, result.applied) == (6, 6)
    # AND a replay under a filter that would have rejected an accepted update says so:
    # k 0.01 with no floor after 1 norm rejects the second update (0.11 against 0.10)
    task_event = next(e for e in ledger if e["kind"] == "task")
    task_event["config"]["outlier_filter"] = {"k": 0.01, "min_history": 1, "rel_floor": 0.0}
    strict = replay(ledger, blobs.__getitem__)
    assert not strict.ok  # and it stops there: the versions after it are not rebuilt
    assert strict.problems[0].startswith("accepted at seq 2, but update 'a-v00000001'")
    assert "outlier: delta norm" in strict.problems[0]


async def test_a_long_update_is_absorbed_clipped_to_clip_update_norm(
    moto_server, prefix, wait_until
):
    # GIVEN a FedAsync task (alpha 0.5, one version) clipping deltas to norm 1
    cfg = TaskConfig.parse(
        {
            "task_name": "clip",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": 0.5,
            "max_versions": 1,
            "clip_update_norm": 1.0,
        }
    )
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        (a,) = clients_for(stack, ("a",), (5,))
        x0 = initial_model()
        # WHEN a sends x0 + 2 on each of the model's 15 values: delta norm 2 sqrt(15) ~ 7.75
        mine = _moved(x0, 2.0)
        await a.submit(await first_notice(a), mine)
        desc = await wait_execution(stack, arn)
        # THEN it is accepted, clipped: x_client := x0 + delta / ||delta|| (norm 1), and
        # FedAsync mixes that in: x1 = x0 + 0.5 x delta / ||delta||
        assert desc["status"] == "SUCCEEDED"
        item = await store.get_item("clip", keys.update_sk("a", "a-v00000000", None))
        assert item["verdict"] == "accepted"
        delta = {k: mine[k].astype(np.float64) - x0[k].astype(np.float64) for k in x0}
        length = _norm(mine, x0)
        assert math.isclose(length, 2 * math.sqrt(15), rel_tol=1e-6)
        clipped = {k: (x0[k] + delta[k] / length).astype(np.float32) for k in x0}
        x1 = mix(x0, clipped, 0.5)
        got = codec.decode(await store.get_object(keys.global_key("clip", 1)))
        for name in x1:
            np.testing.assert_allclose(got[name], x1[name], rtol=0, atol=1e-6)
        # AND the step is half the clipped delta: 0.5 x 1 long, not 0.5 x 7.75
        assert math.isclose(_norm(got, x0), 0.5, rel_tol=1e-5)
        _, result, _ = await _replayed(store, "clip")
    # AND replay clips the same way: the same bytes
    assert result.ok, (result.problems, result.mismatches)
