"""The async decision path's pure part (`async_plan.plan`) on hand-made facts: no AWS, no
ports, no clock. FedAsync's mix x' = (1 - a) x + a x_client is computed by hand."""

from __future__ import annotations

import numpy as np

from fedasync.core import codec, keys
from fedasync.core.asyncagg import AsyncState
from fedasync.core.codec import spec_of
from fedasync.core.config import TaskConfig
from fedasync.core.messages import UpdateRecord
from fedasync.server.async_head import Facts, Submission
from fedasync.server.async_plan import plan
from fedasync.server.task_view import TaskView

CLIENTS = ("a", "b", "c")
HEAD = {"w": np.array([0.0, 0.0], np.float32)}


def view(**over: object) -> TaskView:
    cfg = TaskConfig.parse(
        {"task_name": "digits", "mode": "async", "clients": list(CLIENTS), "alpha": 0.5,
         "staleness": "constant", "max_staleness": 1, **over}
    )  # fmt: skip
    return TaskView(
        cfg=cfg,
        spec=spec_of(HEAD),
        status="RUNNING",
        head_version=3,
        head_sha256=codec.sha256_bytes(codec.encode(HEAD)),
        state=AsyncState(version=3, absorbed=3),
        buffer_sha256=None,
        token="token-1",
        finished=None,
        started_at=0.0,
        latest_metrics={},
        head_size=0,
    )


def submission(client: str, base_version: int, w: list[float]) -> Submission:
    blob = codec.encode({"w": np.array(w, np.float32)})
    record = UpdateRecord(
        task_name="digits",
        client_id=client,
        update_id=f"{client}-v{base_version}",
        base_version=base_version,
        s3_key=keys.local_key("digits", client, base_version, f"{client}-v{base_version}"),
        sha256=codec.sha256_bytes(blob),
        size_bytes=len(blob),
        num_examples=10,
    )
    item = {"task_name": "digits", **record.item()}
    return Submission(record.sk, item, record, data=blob)


def facts(task: TaskView, *batch: Submission) -> Facts:
    return Facts(task, batch, HEAD, None, None, now=100.0)


def test_a_stale_update_in_the_middle_is_a_rejection_and_the_batch_goes_on() -> None:
    # GIVEN a FedAsync task at version 3 (alpha 0.5, constant s, max_staleness 1), w = (0, 0)
    task = view()
    # WHEN a batch of 3 is planned: a on v3, b on v2, c on v3
    batch = [submission("a", 3, [2.0, 4.0]), submission("b", 2, [9.0, 9.0]),
             submission("c", 3, [3.0, 6.0])]  # fmt: skip
    out = plan(facts(task, *batch))
    # THEN a is accepted (seq 4, v4 = 0.5 * 0 + 0.5 * (2, 4) = (1, 2)); b, 2 behind v4,
    # is rejected as stale; c, 1 behind v4, is accepted (seq 5, v5 = ((1+3)/2, (2+6)/2))
    verdicts = [d.verdict for d in out.decided]
    assert [v["verdict"] for v in verdicts] == ["accepted", "rejected", "accepted"]
    assert (verdicts[0]["seq"], verdicts[0]["staleness"], verdicts[0]["applied_version"]) == (
        4,
        0,
        4,
    )
    assert verdicts[0]["weight"] == 0.5
    assert verdicts[1]["reason"] == "stale"
    assert "stale: 2 > 1" in verdicts[1]["detail"]
    assert verdicts[1]["attributed"] is False  # staleness is no fault of the silo
    assert (verdicts[2]["seq"], verdicts[2]["staleness"], verdicts[2]["applied_version"]) == (
        5,
        1,
        5,
    )
    np.testing.assert_array_equal(out.head.produced[4]["w"], np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(out.head.produced[5]["w"], np.array([2.0, 4.0], np.float32))
    # AND the TASK counters are as by hand: 5 absorbed, head at version 5, its SHA-256 the
    # one of v5's bytes, which the plan writes under the version's key (v4's too)
    v5 = codec.encode({"w": np.array([2.0, 4.0], np.float32)})
    assert out.head.values["absorbed"] == 5
    assert out.head.values["head_version"] == 5
    assert out.head.values["head_sha256"] == codec.sha256_bytes(v5)
    written = {w.key: w.blob for w in out.writes}
    assert written[keys.global_key("digits", 5)] == v5
    assert sorted(written) == sorted([keys.global_key("digits", 4), keys.global_key("digits", 5)])
    # AND b is owed a go-ahead; it was owed one already at c's accept (its notice serves b)
    assert out.waiting == {"b"}
    assert out.waiting_at_accept == {"b"}


def test_a_batch_of_one_is_the_same_decision() -> None:
    # GIVEN the same task; WHEN b's update on v2 is planned alone
    out = plan(facts(view(), submission("b", 2, [9.0, 9.0])))
    # THEN it is accepted: 1 behind v3 is within max_staleness 1; v4 = (4.5, 4.5)
    [decided] = out.decided
    assert (decided.verdict["verdict"], decided.verdict["seq"], decided.verdict["staleness"]) == (
        "accepted", 4, 1,
    )  # fmt: skip
    np.testing.assert_array_equal(out.head.produced[4]["w"], np.array([4.5, 4.5], np.float32))


def test_nan_and_finished_task_rejections_are_verdicts_with_their_reasons() -> None:
    # GIVEN the task, and an update whose object holds a NaN
    nan = submission("a", 3, [float("nan"), 0.0])
    # WHEN planned together with a valid one in between
    out = plan(facts(view(), nan, submission("c", 3, [2.0, 2.0])))
    # THEN the NaN one is rejected (non_finite) and c still makes v4 = (1, 1)
    assert [d.verdict["verdict"] for d in out.decided] == ["rejected", "accepted"]
    assert out.decided[0].verdict["reason"] == "non_finite"
    np.testing.assert_array_equal(out.head.produced[4]["w"], np.array([1.0, 1.0], np.float32))
    # WHEN the task has finished: THEN every update is rejected, nothing is written and no
    # silo is owed a go-ahead (a finished task sends none)
    done = view()
    done = TaskView(**{**done.__dict__, "finished": "max_versions"})
    out = plan(facts(done, submission("c", 3, [2.0, 2.0])))
    assert [d.verdict["reason"] for d in out.decided] == ["task_finished"]
    assert (out.writes, out.head.values, out.waiting) == ([], {}, set())


def test_a_version_a_previous_try_released_is_the_version_the_batch_goes_on_from() -> None:
    # GIVEN central DP's write-once releases: a previous try released v4 = (8, 8) first
    first_try = {4: {"w": np.array([8.0, 8.0], np.float32)}}
    batch = (submission("a", 3, [2.0, 4.0]), submission("c", 3, [0.0, 0.0]))
    # WHEN the batch is planned again with that release among its facts
    out = plan(Facts(view(), batch, HEAD, None, None, now=100.0, releases=first_try))
    # THEN v4 is the release (its bytes, its SHA-256 in a's verdict), and c mixes into it:
    # v5 = 0.5 * (8, 8) + 0.5 * (0, 0) = (4, 4)
    v4 = codec.encode(first_try[4])
    assert out.decided[0].verdict["version_sha256"] == codec.sha256_bytes(v4)
    np.testing.assert_array_equal(out.head.produced[5]["w"], np.array([4.0, 4.0], np.float32))
