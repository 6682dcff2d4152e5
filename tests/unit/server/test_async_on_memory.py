"""An async task's updates decided by the server's own code on in-memory ports (unit tier):
the stream's run and the one-by-one path go through one decision path (`async_task`),
where a rejection is a verdict of the plan and does not stop the run."""

from __future__ import annotations

import numpy as np
from structlog.testing import capture_logs

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from tests.unit.server.memory_stack import MemoryStack

CLIENTS = ("hospital-a", "bank-b", "dc-c")


def initial() -> dict[str, np.ndarray]:
    return {"w": np.array([0.0, 0.0], np.float32)}


def weights(*w: float) -> dict[str, np.ndarray]:
    return {"w": np.array(w, np.float32)}


def config(**over: object) -> TaskConfig:
    return TaskConfig.parse(
        {"task_name": "digits", "mode": "async", "clients": list(CLIENTS), "alpha": 0.5,
         "staleness": "constant", "max_staleness": 0, "max_versions": 10, **over}
    )  # fmt: skip


async def opened(stack: MemoryStack) -> None:
    arn = await stack.start(config(), initial())
    await stack.control(arn, "open_task", "digits", None)
    stack.notices.sent.clear()


async def test_a_rejection_inside_a_run_does_not_stop_the_run() -> None:
    # GIVEN an open FedAsync task at version 0 (alpha 0.5, constant s, max_staleness 0)
    stack = MemoryStack()
    await opened(stack)
    # WHEN three silos' updates arrive in one stream batch: a on v0, b holding a NaN, c on v0
    a = await stack.submit_async("digits", "hospital-a", 0, weights(2.0, 4.0))
    b = await stack.submit_async("digits", "bank-b", 0, weights(float("nan"), 1.0))
    c = await stack.submit_async("digits", "dc-c", 0, weights(6.0, 8.0))
    with capture_logs() as logs:
        await stack.deliver()
    # THEN one run decided all three in one commit: a accepted (v1 = (1, 2)), b rejected
    # (non_finite), c rejected as stale (v0 is 1 behind v1 > max_staleness 0)
    got = [await stack.store.get_item("digits", r.sk) or {} for r in (a, b, c)]
    assert [g["verdict"] for g in got] == ["accepted", "rejected", "rejected"]
    assert (got[0]["seq"], got[0]["applied_version"]) == (1, 1)
    assert (got[1]["reason"], got[2]["reason"]) == ("non_finite", "stale")
    run = [e for e in logs if e["event"] == "update.run_committed"]
    assert [e["updates"] for e in run] == [3]
    rejected = [e for e in logs if e["event"] == "update.rejected"]
    assert [(e["client_id"], e["reason"]) for e in rejected] == [
        ("bank-b", "non_finite"), ("dc-c", "stale"),
    ]  # fmt: skip
    np.testing.assert_array_equal((await stack.global_model("digits", 1))["w"], [1.0, 2.0])
    # AND the TASK head is v1 with its bytes' SHA-256, and b, c wait for a go-ahead
    task = await stack.store.get_task("digits") or {}
    blob = await stack.objects.get_bytes(keys.global_key("digits", 1))
    assert (task["head_version"], task["absorbed"]) == (1, 1)
    assert task["head_sha256"] == codec.sha256_bytes(blob)
    assert set(task["waiting"]) == {"bank-b", "dc-c"}
    # AND the only go-ahead went to a, whose update was accepted (b, c were rejected after it)
    assert [(n.version, r) for n, r in stack.notices.sent] == [(1, ("hospital-a",))]


async def test_the_one_by_one_path_decides_the_same_way() -> None:
    # GIVEN the same task; WHEN a's and c's updates are delivered one stream batch each
    stack = MemoryStack()
    await opened(stack)
    a = await stack.submit_async("digits", "hospital-a", 0, weights(2.0, 4.0))
    await stack.deliver()
    c = await stack.submit_async("digits", "dc-c", 0, weights(6.0, 8.0))
    await stack.deliver()
    # THEN c is rejected as stale by its own batch of one, and waits for a go-ahead
    assert (await stack.store.get_item("digits", a.sk) or {})["verdict"] == "accepted"
    stale = await stack.store.get_item("digits", c.sk) or {}
    assert (stale["verdict"], stale["reason"]) == ("rejected", "stale")
    # WHEN c trains again on v1 and submits
    c2 = await stack.submit_async("digits", "dc-c", 1, weights(3.0, 2.0))
    await stack.deliver()
    # THEN it is accepted: v2 = 0.5 * (1, 2) + 0.5 * (3, 2) = (2, 2); c waits no more and
    # got the go-ahead for v2
    assert (await stack.store.get_item("digits", c2.sk) or {})["seq"] == 2
    np.testing.assert_array_equal((await stack.global_model("digits", 2))["w"], [2.0, 2.0])
    task = await stack.store.get_task("digits") or {}
    assert not task.get("waiting")
    assert stack.notices.sent[-1][0].version == 2
    assert "dc-c" in stack.notices.sent[-1][1]


async def test_a_silo_accepted_then_rejected_in_one_batch_is_owed_a_go_ahead_again() -> None:
    # GIVEN bank-b waits for a go-ahead: its update on version 1 was rejected (future_version)
    stack = MemoryStack()
    await opened(stack)
    await stack.submit_async("digits", "bank-b", 1, weights(1.0, 1.0))
    await stack.deliver()
    assert set((await stack.store.get_task("digits") or {})["waiting"]) == {"bank-b"}
    # WHEN one batch holds b's update on v0 (accepted: v1) and a second one of b's on v0
    # (stale against v1)
    first = await stack.submit_async("digits", "bank-b", 0, weights(2.0, 2.0))
    again = await stack.submit_async("digits", "bank-b", 0, weights(4.0, 4.0), update_id="b-2")
    await stack.deliver()
    # THEN b's first is accepted, its second rejected, and b waits for a go-ahead again
    verdicts = [(await stack.store.get_item("digits", r.sk) or {}).get("verdict")
                for r in (first, again)]  # fmt: skip
    assert verdicts == ["accepted", "rejected"]
    assert set((await stack.store.get_task("digits") or {})["waiting"]) == {"bank-b"}


HUGE = 3.0e38  # finite in float32; a FedBuff step of 10 * 3e38 is not


def fedbuff(**over: object) -> TaskConfig:
    return config(strategy="fedbuff", buffer_size=2, server_lr=10.0, max_staleness=4, **over)


async def test_a_refused_fedbuff_step_inside_a_run_drops_the_buffer_and_the_run_goes_on() -> None:
    # GIVEN an open FedBuff task (K = 2, server_lr 10) at version 0, w = (0, 0)
    stack = MemoryStack()
    arn = await stack.start(fedbuff(), initial())
    await stack.control(arn, "open_task", "digits", None)
    # WHEN one batch: a and b send finite models 3e38 (b's fills the buffer, and the step
    # 0 + 10 * 3e38 overflows float32), then c sends (1, 1)
    a = await stack.submit_async("digits", "hospital-a", 0, weights(HUGE, HUGE))
    b = await stack.submit_async("digits", "bank-b", 0, weights(HUGE, HUGE))
    c = await stack.submit_async("digits", "dc-c", 0, weights(1.0, 1.0))
    await stack.deliver()
    # THEN a keeps its verdict and seq, marked discarded with b's refused step; b is
    # rejected with the cause; c is accepted into a fresh buffer (seq 2, 1 buffered)
    got = [await stack.store.get_item("digits", r.sk) or {} for r in (a, b, c)]
    assert (got[0]["verdict"], got[0]["seq"], got[0]["discarded"]) == (
        "accepted", 1, "global_non_finite",
    )  # fmt: skip
    assert (got[1]["verdict"], got[1]["reason"]) == ("rejected", "global_non_finite")
    assert (got[2]["verdict"], got[2]["seq"]) == ("accepted", 2)
    task = await stack.store.get_task("digits") or {}
    assert (task["head_version"], task["absorbed"], task["buffered"]) == (0, 2, 1)
    assert task["global_refused"]["updates"] == [b.sk, a.sk]
    # WHEN a sends (3, 3) in the next batch: THEN the buffer (c, a) flushes, and v1 is
    # 0 + 10 * ((1 + 3) / 2) = 20 (both of staleness 0, weight 1)
    await stack.submit_async("digits", "hospital-a", 0, weights(3.0, 3.0), update_id="a-2")
    await stack.deliver()
    np.testing.assert_array_equal((await stack.global_model("digits", 1))["w"], [20.0, 20.0])


async def test_a_refused_step_drops_a_buffer_begun_before_the_batch() -> None:
    # GIVEN a's update of 3e38 buffered by an earlier batch
    stack = MemoryStack()
    arn = await stack.start(fedbuff(), initial())
    await stack.control(arn, "open_task", "digits", None)
    a = await stack.submit_async("digits", "hospital-a", 0, weights(HUGE, HUGE))
    await stack.deliver()
    # WHEN b's 3e38 fills the buffer (refused step) and c's (1, 1) follows, in one batch
    b = await stack.submit_async("digits", "bank-b", 0, weights(HUGE, HUGE))
    c = await stack.submit_async("digits", "dc-c", 0, weights(1.0, 1.0))
    await stack.deliver()
    # THEN a, committed before, is marked discarded; b rejected; c starts a fresh buffer
    got = [await stack.store.get_item("digits", r.sk) or {} for r in (a, b, c)]
    assert [g.get("discarded") for g in got] == ["global_non_finite", None, None]
    assert [g["verdict"] for g in got] == ["accepted", "rejected", "accepted"]
    task = await stack.store.get_task("digits") or {}
    assert (task["head_version"], task["absorbed"], task["buffered"]) == (0, 2, 1)
    assert task["global_refused"]["updates"] == [b.sk, a.sk]
