"""Central DP on an async FedBuff task, on the embedded stack: one Gaussian release per
buffer flush, x <- x + server_lr * (sum_i w_i clip_C(x_i - x_base_i) + N(0, (z C w_max)^2)) / K,
a silo at most once per buffer, the budget (counted by dp-accounting's own API) ending
the task with its reason, replay identical, and no noise in logs, ledger or items.

Expected values come from hand computation (clipped deltas, weights 1/sqrt(1+staleness))
and from dp-accounting (the releases a budget buys), never from fedasync's code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from structlog.testing import capture_logs

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.core.replay import replay
from fedasync.ops.events import export_ledger, object_keys
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_central_dp import clip_by_hand, rdp_epsilon
from tests.integration.test_server_async import (
    CLIENTS,
    first_notice,
    go_ahead,
    head,
    make_stack,
    verdict,
)
from tests.integration.test_server_sync import clients_for, store_for, wait_execution

Z, C, DELTA, LR = 0.9, 1.5, 1e-3, 1.0
SIZE = 4000
K = 2


def _noise_is_z_c_w_max(noise: np.ndarray, w_max: float) -> None:
    """The per-coordinate spread of `noise` is z*C*w_max: its sum of squares lies in the
    chi-square interval (probability 2e-6 of a false failure), its mean near 0."""
    sigma = Z * C * w_max
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], SIZE)
    assert low <= float(np.sum(noise**2)) / sigma**2 <= high
    assert abs(float(noise.mean())) < 6 * sigma / math.sqrt(SIZE)


def _cfg() -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": "pb",
            "mode": "async",
            "strategy": "fedbuff",
            "clients": list(CLIENTS),
            "buffer_size": K,
            "server_lr": LR,
            "max_staleness": 3,
            "max_versions": 10,
            "privacy": {
                "mode": "central",
                "clip_norm": C,
                "noise_multiplier": Z,
                # dp-accounting's own count: 2 releases fit, 3 do not
                "target_epsilon": (rdp_epsilon(2, Z, DELTA) + rdp_epsilon(3, Z, DELTA)) / 2,
                "delta": DELTA,
            },
        }
    )


async def test_each_fedbuff_flush_is_one_noised_release_a_silo_once_per_buffer(
    moto_server, prefix, wait_until
):
    # GIVEN an async FedBuff task (K = 2) under central DP whose budget buys 2 flushes
    x0 = {"w": np.zeros(SIZE, np.float32)}
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        with capture_logs() as logs:
            arn = await start_task(store, stack.endpoints.state_machine_arn, _cfg(), x0)
            a, b, c = clients_for(stack, CLIENTS, (5, 5, 5))
            na, nb, nc = [await first_notice(x) for x in (a, b, c)]
            # WHEN a submits on version 0 (buffered), then a second update on version 0
            await a.submit(na)
            sk_a = keys.update_sk("a", "a-v00000000", None)
            assert (await verdict(store, "pb", sk_a, wait_until))["verdict"] == "accepted"
            await a.submit(na, local_model(x0, 0, 1), update_id="a-again")
            again = await verdict(store, "pb", keys.update_sk("a", "a-again", None), wait_until)
            # THEN the second is rejected with its reason: a silo once per buffer
            assert (again["verdict"], again["reason"]) == ("rejected", "dp_silo_in_buffer")
            assert (await store.get_task("pb"))["head_version"] == 0
            # WHEN b submits on version 0: the buffer is full and flushes (release 1)
            await b.submit(nb)
            await head(store, "pb", wait_until, 1)
            # AND c submits on version 0 (staleness 1, w = 1/sqrt 2) and a on version 1
            await c.submit(nc)
            sk_c = keys.update_sk("c", "c-v00000000", None)
            assert (await verdict(store, "pb", sk_c, wait_until))["verdict"] == "accepted"
            na1 = await go_ahead(a)
            assert na1.version == 1
            await a.submit(na1)
            desc = await wait_execution(stack, arn, timeout_s=60)
        # THEN the task ended after 2 releases (flushes), with the budget as its reason
        assert desc["status"] == "SUCCEEDED"
        task = await store.get_task("pb")
        assert task["finished"] == "privacy_budget"
        assert int(task["head_version"]) == 2 and int(task["dp_releases"]) == 2
        assert int(task["absorbed"]) == 4
        # AND a was held back while its update sat in the buffer: its only notices before
        # the final one are version 0 (the opening) and version 1 (after the flush)
        assert [n.version for n in a.seen if not n.final][:2] == [0, 1]
        # AND release 1 is x0 + (clip(dA) + clip(dB) + noise) / K, noise std z*C (w_max 1)
        base = x0["w"].astype(np.float64)
        d_a, d_b, d_c = (local_model(x0, i, 0)["w"].astype(np.float64) - base for i in range(3))
        assert min(np.linalg.norm(d) for d in (d_a, d_b, d_c)) > C  # clipping really happens
        x1 = codec.decode(await store.get_object(keys.global_key("pb", 1)))["w"]
        exact1 = base + LR * (clip_by_hand(d_a, C) + clip_by_hand(d_b, C)) / K
        _noise_is_z_c_w_max((x1.astype(np.float64) - exact1) * K / LR, 1.0)
        # AND release 2 is x1 + (clip(dC)/sqrt 2 + clip(dA')) / K, noise z*C*max(1/sqrt 2, 1)
        x1_64 = x1.astype(np.float64)
        d_a2 = local_model({"w": x1}, 0, 1)["w"].astype(np.float64) - x1_64
        x2 = codec.decode(await store.get_object(keys.global_key("pb", 2)))["w"]
        exact2 = x1_64 + LR * (clip_by_hand(d_c, C) / math.sqrt(2) + clip_by_hand(d_a2, C)) / K
        _noise_is_z_c_w_max((x2.astype(np.float64) - exact2) * K / LR, 1.0)
        item_c = await store.get_item("pb", sk_c)
        assert math.isclose(float(item_c["weight"]), 1 / math.sqrt(2))
        # AND replay re-derives the buffers, the cap and the flushes, takes each release
        # as recorded, and ends at the head, byte for byte
        ledger = await export_ledger(store, "pb")
        blobs = {k: await store.get_object(k) for k in object_keys(ledger)}
        result = replay(ledger, blobs.__getitem__)
        assert result.ok, (result.problems, result.mismatches)
        assert [check.version for check in result.checks] == [1, 2]
        # AND no log line, ledger line or server item holds the noise or an unclipped norm:
        # the TASK item's DP fields are counts, silo ids and the buffer's largest weight
        dp_fields = {k: v for k, v in task.items() if k.startswith("dp_")}
        assert set(dp_fields) == {
            "dp_releases",
            "dp_release_limit",
            "dp_buffer_clients",
            "dp_buffer_max_weight",
            "dp_flushed_clients",
        }
        items = await store.query_prefix("pb", keys.UPDATE_PREFIX)
        text = json.dumps([ledger, logs, items, task], default=str)
        assert "norm_before" not in text and "noise" not in text.replace("noise_multiplier", "")
        for entry in logs:
            assert not any(
                isinstance(v, np.ndarray | list) and len(v) > 100 for v in entry.values()
            )


def test_central_dp_fedbuff_needs_a_buffer_the_silos_can_fill_once_each():
    # GIVEN 3 silos and K = 4: with a silo at most once per buffer it would never flush
    with pytest.raises(ConfigError, match="can never fill"):
        TaskConfig.parse({**_cfg().model_dump(mode="json"), "buffer_size": 4})
