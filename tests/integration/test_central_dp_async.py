"""Central DP on an async FedAsync task, on the embedded stack: each absorbed update is
one release, x <- (1 - a) x + a (x_base + clip_C(x_client - x_base) + N(0, (z C)^2)); the
budget, counted by dp-accounting's own API, ends the task with its reason."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger, object_keys
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_central_dp import clip_by_hand, rdp_epsilon
from tests.integration.test_server_async import CLIENTS, first_notice, make_stack
from tests.integration.test_server_sync import clients_for, store_for, wait_execution

Z, C, DELTA, ALPHA = 0.9, 1.5, 1e-3, 0.5
SIZE = 4000


async def test_each_fedasync_update_is_a_noised_release_until_the_budget_is_spent(
    moto_server, prefix, wait_until
):
    # GIVEN an async FedAsync task whose budget buys exactly 2 releases (dp-accounting)
    cfg = TaskConfig.parse(
        {
            "task_name": "pa",
            "mode": "async",
            "clients": list(CLIENTS),
            "alpha": ALPHA,
            "staleness": "constant",
            "max_versions": 10,
            "privacy": {
                "mode": "central",
                "clip_norm": C,
                "noise_multiplier": Z,
                "target_epsilon": (rdp_epsilon(2, Z, DELTA) + rdp_epsilon(3, Z, DELTA)) / 2,
                "delta": DELTA,
            },
        }
    )
    x0 = {"w": np.zeros(SIZE, np.float32)}
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        a, b, _ = clients_for(stack, CLIENTS, (5, 5, 5))
        # WHEN a, then b submit an update each, both trained on version 0 (b's absorbed
        # with staleness 1; a constant staleness function keeps alpha_t = alpha)
        await a.submit(await first_notice(a))

        async def at(version: int):
            item = await store.get_task("pa")
            return item if item and int(item["head_version"]) >= version else None

        await wait_until(lambda: at(1), timeout_s=30)
        x1 = codec.decode(await store.get_object(keys.global_key("pa", 1)))["w"]
        await b.submit(await first_notice(b))
        desc = await wait_execution(stack, arn, timeout_s=60)
        # THEN the task ended after those 2 releases, with the budget as its reason
        assert desc["status"] == "SUCCEEDED"
        task = await store.get_task("pa")
        assert task["finished"] == "privacy_budget"
        assert int(task["head_version"]) == 2 and int(task["dp_releases"]) == 2
        # AND each version is (1-a) x + a (x_base + clip(delta) + noise), the noise's
        # per-coordinate spread z*C in the silo's noised model (chi-square interval)
        x2 = codec.decode(await store.get_object(keys.global_key("pa", 2)))["w"]
        base = x0["w"].astype(np.float64)
        for head, after, index in ((base, x1, 0), (x1.astype(np.float64), x2, 1)):
            delta = local_model(x0, index, 0)["w"].astype(np.float64) - base
            assert np.linalg.norm(delta) > C  # clipping really happens
            exact = (1 - ALPHA) * head + ALPHA * (base + clip_by_hand(delta, C))
            noise = (after.astype(np.float64) - exact) / ALPHA
            low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], SIZE)
            assert low <= float(np.sum(noise**2)) / (Z * C) ** 2 <= high
            assert abs(float(noise.mean())) < 6 * Z * C / math.sqrt(SIZE)
        # AND replay takes each release as recorded, checks it, and ends at the head
        ledger = await export_ledger(store, "pa")
        blobs = {k: await store.get_object(k) for k in object_keys(ledger)}
        result = replay(ledger, blobs.__getitem__)
        assert result.ok, (result.problems, result.mismatches)
