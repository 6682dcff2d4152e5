"""A new global model that would not be finite is refused before commit, on the real stack.

Finite, accepted updates can still make a bad global model: a FedBuff step x + eta *
mean(delta) overflows float32 with a large server_lr and large deltas. The server checks
every candidate (`check_new_global`) in every mode: the head stays, the updates that made
it carry the reason, `task status` says so, and the honest silos go on being served.
Also here: a FedBuff task whose model has a 0-d tensor passes version 0.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedasync import logs
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.errors import RegistryError
from fedasync.core.fedavg import FedAvgAccumulator
from fedasync.core.replay import replay
from fedasync.core.streamfold import RangeSum
from fedasync.ops.events import export_ledger, export_objects, folder_loader
from fedasync.server.tasks import start_task
from tests.integration.scripted import local_model
from tests.integration.test_server_async import first_notice, make_stack, verdict
from tests.integration.test_server_sync import clients_for, initial_model, store_for, wait_execution
from tests.integration.test_taskctl import cli

CLIENTS = ("a", "b", "c")
HUGE = 3.0e38  # finite in float32 (max 3.4028235e38)


def fedbuff(name: str, **over) -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": name,
            "mode": "async",
            "strategy": "fedbuff",
            "clients": list(CLIENTS),
            "buffer_size": 2,
            "max_staleness": 4,
            **over,
        }
    )


async def chain(store, task: str) -> dict[int, str]:
    """The ledger's chain of global models past version 0: version -> SHA-256."""
    return {e["version"]: e["sha256"] for e in await export_ledger(store, task)
            if e["kind"] == "version"}  # fmt: skip


def huge(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A finite model, far from x: every kernel entry 3e38."""
    return {**x, "dense/kernel": np.full_like(x["dense/kernel"], HUGE)}


async def notice_after(client, seq: int):
    """The first go-ahead that announces at least `seq` absorbed updates."""
    while True:
        notice = await first_notice(client)
        if (notice.seq or 0) >= seq:
            return notice


async def test_a_fedbuff_step_to_an_inf_global_is_refused_and_the_honest_silos_go_on(
    moto_server, prefix, wait_until, tmp_path
):
    # the test's own stderr, bound now: the pumps' lines stay out of the CLI's
    # (CliRunner's) stderr, which these tests read
    logs.configure(level="WARNING", stream=sys.stderr)
    # GIVEN FedBuff, K = 2, server_lr 10 (the bound), no norm bound, at version 0
    cfg = fedbuff("inf", server_lr=10.0, max_versions=1)
    x0 = initial_model()
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        a, b, c = clients_for(stack, CLIENTS, (5, 5, 5))
        na, nb, nc = await first_notice(a), await first_notice(b), await first_notice(c)
        head0 = (await store.get_task("inf"))["head_sha256"]
        # WHEN a and b send finite models whose deltas are 3e38: the step x0 + 10 * 3e38
        await a.submit(na, huge(x0))
        sk_a = keys.update_sk("a", "a-v00000000", None)
        assert (await verdict(store, "inf", sk_a, wait_until))["verdict"] == "accepted"
        sk_b = keys.update_sk("b", "b-v00000000", None)
        with capture_logs() as logged:
            await b.submit(nb, huge(x0))
            refused = await verdict(store, "inf", sk_b, wait_until)
        # THEN b, whose update made the step, is rejected with the reason
        assert refused["verdict"] == "rejected"
        assert refused["reason"] == "global_non_finite"
        for fragment in ("'b'", "'inf'", "FedBuff step of 2 buffered update(s)",
                         "12 NaN/Inf value(s) in tensor 'dense/kernel'",
                         "the 1 update(s) buffered with it are dropped"):  # fmt: skip
            assert fragment in refused["detail"]
        # AND the refusal is logged, naming the update and the buffer it dropped
        events = [e for e in logged if e["event"] == "global.refused"]
        assert [(e["reason"], e["sk"], e["discarded"], e["version"]) for e in events] == [
            ("global_non_finite", sk_b, [sk_a], 0)]  # fmt: skip
        # AND a's buffered update keeps its verdict and seq, marked as discarded with b's step
        item_a = await store.get_item("inf", sk_a)
        assert (item_a["verdict"], item_a["seq"], item_a["discarded"]) == (
            "accepted", 1, "global_non_finite")  # fmt: skip
        # AND the head, its SHA-256 and the ledger's chain did not move; the buffer is empty
        task = await store.get_task("inf")
        assert (task["head_version"], task["head_sha256"], task["absorbed"], task["buffered"]) == (
            0, head0, 1, 0)  # fmt: skip
        assert task["global_refused"]["updates"] == [sk_b, sk_a]
        assert await chain(store, "inf") == {}
        with pytest.raises(RegistryError):
            await store.get_object(keys.global_key("inf", 1))
        # AND `task status` says so
        status = await cli(stack, "task", "status", "inf", "--json")
        assert status.exit_code == 0, status.output
        out = json.loads(status.stdout)
        assert out["global_refused"]["reason"] == "global_non_finite"
        assert out["global_refused"]["version"] == 0
        assert out["updates"]["discarded"] == 1
        assert [r["reason"] for r in out["updates"]["rejections"]] == ["global_non_finite"]
        table = await cli(stack, "task", "status", "inf")
        assert "refused global model" in table.stdout
        words = " ".join(table.stdout.replace("│", " ").split())  # the table wraps its cells
        assert "global_non_finite at version 0 (1 accepted update(s) discarded)" in words

        # WHEN c and then a train honestly from version 0
        await c.submit(nc)
        # THEN b, rejected, is served the go-ahead that c's accepted update brings
        assert (await notice_after(b, 2)).version == 0
        await a.submit(na, local_model(x0, 0, 0), update_id="a-honest")
        desc = await wait_execution(stack, arn)
        # AND version 1 is x0 + 10 * (dC + dA) / 2 (a fresh buffer, both weight 1)
        dc = {k: local_model(x0, 2, 0)[k].astype(np.float64) - x0[k] for k in x0}
        da = {k: local_model(x0, 0, 0)[k].astype(np.float64) - x0[k] for k in x0}
        expected = {k: (x0[k] + 10.0 * (dc[k] + da[k]) / 2).astype(np.float32) for k in x0}
        blob = await store.get_object(keys.global_key("inf", 1))
        for name, arr in codec.decode(blob).items():
            np.testing.assert_array_equal(arr, expected[name])
        assert desc["status"] == "SUCCEEDED"
        # AND the chain has exactly that version, and a replay of the ledger rebuilds it
        assert await chain(store, "inf") == {1: codec.sha256_bytes(blob)}
        events = await export_ledger(store, "inf")
        await export_objects(store, events, tmp_path)
        result = replay(events, folder_loader(tmp_path))
        assert result.ok, (result.problems, result.mismatches)
        assert [c.version for c in result.checks] == [1]


def trained(x: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """`local_model` at version 0, its 0-d tensors kept as 0-d arrays (not numpy scalars)."""
    return {k: np.asarray(v, dtype=x[k].dtype) for k, v in local_model(x, index, 0).items()}


async def test_a_fedbuff_task_with_a_scalar_tensor_passes_version_0(
    moto_server, prefix, wait_until
):
    # GIVEN FedBuff K = 2, server_lr 1, a model with a 0-d tensor (numpy arithmetic on
    # 0-d arrays gives numpy scalars, which the codec refused as the new global model)
    cfg = fedbuff("scalar", server_lr=1.0, max_versions=1)
    x0 = {**initial_model(), "scale": np.array(1.5, np.float32)}
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, x0)
        a, b, _ = clients_for(stack, CLIENTS, (5, 5, 5))
        # WHEN a and b answer version 0: the buffer fills and FedBuff steps
        await a.submit(await first_notice(a), trained(x0, 0))
        await b.submit(await first_notice(b), trained(x0, 1))
        desc = await wait_execution(stack, arn)
        # THEN version 1 is x0 + (dA + dB) / 2, the scalar a 0-d tensor, and the task ends
        d = [{k: trained(x0, i)[k].astype(np.float64) - x0[k] for k in x0} for i in (0, 1)]
        expected = {k: (x0[k] + (d[0][k] + d[1][k]) / 2).astype(np.float32) for k in x0}
        assert expected["scale"].shape == ()
        assert desc["status"] == "SUCCEEDED"
        final = codec.decode(await store.get_object(keys.final_key("scalar")))
        assert final["scale"].shape == ()
        for name, arr in final.items():
            np.testing.assert_array_equal(arr, expected[name])
        assert sorted(await chain(store, "scalar")) == [1]


async def test_a_sync_round_whose_fedavg_is_not_finite_fails_the_task_and_keeps_the_head(
    moto_server, prefix, monkeypatch
):
    """FedAvg of finite updates is finite (a weighted mean): only a bug makes it otherwise.
    Such a bug is injected here to show the safety net: a round that cannot be committed
    fails the task with its cause rather than moving on. Both folds are poisoned, the
    whole-model accumulator's result and the streamed close's range sums (a plain FedAvg
    round is closed streamed), so the test holds whichever path closes the round."""
    real_result, real_finish = FedAvgAccumulator.result, RangeSum.finish

    def poisoned(self):
        out = real_result(self)
        out["dense/bias"] = np.full_like(out["dense/bias"], np.inf)
        return out

    def poisoned_finish(self, total_examples, non_finite):
        at = 0
        for piece in self.span.pieces:
            if piece.name == "dense/bias":
                self._acc[at : at + piece.count] = np.inf
            at += piece.count
        return real_finish(self, total_examples, non_finite)

    monkeypatch.setattr(FedAvgAccumulator, "result", poisoned)
    monkeypatch.setattr(RangeSum, "finish", poisoned_finish)
    cfg = TaskConfig.parse(
        {"task_name": "sync-inf", "clients": list(CLIENTS), "rounds": 2, "round_timeout_s": 60}
    )
    async with await make_stack(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        head0 = (await store.get_task("sync-inf"))["head_sha256"]
        # WHEN every client answers round 0
        for client in clients_for(stack, CLIENTS, (10, 30, 60)):
            await client.submit(await first_notice(client))
        desc = await wait_execution(stack, arn)
        # THEN the round closes without a new version and the task fails with the cause
        assert desc["status"] == "FAILED"
        task = await store.get_task("sync-inf")
        assert task["status"] == "FAILED"
        for fragment in ("round 0 of task 'sync-inf'", "FedAvg of its 3 accepted update(s)",
                         "3 NaN/Inf value(s) in tensor 'dense/bias'",
                         "the round closed without a new version"):  # fmt: skip
            assert fragment in task["cause"]
        # AND the head and the chain did not move; the members carry the reason
        assert (task["head_version"], task["head_sha256"]) == (0, head0)
        assert task["global_refused"]["reason"] == "global_non_finite"
        assert await chain(store, "sync-inf") == {}
        with pytest.raises(RegistryError):
            await store.get_object(keys.global_key("sync-inf", 1))
        for client_id in CLIENTS:
            item = await store.get_item("sync-inf", keys.update_sk(client_id, "", 0))
            assert (item["verdict"], item["discarded"]) == ("accepted", "global_non_finite")
