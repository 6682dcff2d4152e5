"""A sync task's rounds decided by the server's own code on in-memory ports (unit tier).

FedAvg is checked against a hand computation; the trust boundary's cases (a forged
verdict, a re-put, a squat) are checked the same way they are on the embedded stack
(tests/faults/test_trust_boundary.py), in milliseconds.
"""

from __future__ import annotations

import numpy as np

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from tests.unit.server.memory_stack import MemoryStack

CLIENTS = ("hospital-a", "bank-b", "dc-c")
EXAMPLES = (10, 30, 60)


def initial() -> dict[str, np.ndarray]:
    return {"w": np.array([1.0, 2.0, 3.0], np.float32), "b": np.zeros(2, np.float32)}


def local(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full(3, float(i + 1), np.float32), "b": np.array([i, -i], np.float32)}


def config(**over: object) -> TaskConfig:
    return TaskConfig.parse(
        {"task_name": "digits", "clients": list(CLIENTS), "rounds": 2, "round_timeout_s": 60,
         **over}
    )  # fmt: skip


async def test_a_round_closes_with_fedavg_by_hand_and_answers_its_token() -> None:
    # GIVEN a sync task of 3 silos with 10, 30 and 60 examples, round 0 opened
    stack = MemoryStack()
    arn = await stack.start(config(), initial())
    token = await stack.control(arn, "open_round", "digits", 0)
    # THEN the round's notice went to every silo
    [(notice, recipients)] = stack.notices.sent
    assert (notice.round_id, sorted(recipients)) == (0, sorted(CLIENTS))
    # WHEN each silo submits w = i+1 everywhere, b = (i, -i)
    for i, (client, n) in enumerate(zip(CLIENTS, EXAMPLES, strict=True)):
        await stack.submit("digits", client, 0, local(i), n)
    await stack.deliver()
    # THEN version 1 is the example-weighted mean, by hand: w = (10*1 + 30*2 + 60*3)/100
    got = await stack.global_model("digits", 1)
    np.testing.assert_array_equal(got["w"], np.full(3, 2.5, np.float32))
    np.testing.assert_array_equal(got["b"], np.array([1.5, -1.5], np.float32))  # (30+120)/100
    # AND the round's wait got its answer, naming the new head, and the TASK moved on
    answer = stack.executions.waits[token].answer
    assert answer is not None and answer["version"] == 1
    task = await stack.store.get_task("digits") or {}
    blob = await stack.objects.get_bytes(keys.global_key("digits", 1))
    assert (task["head_version"], task["head_sha256"]) == (1, codec.sha256_bytes(blob))


async def test_a_forged_verdict_or_a_reput_changes_no_decision() -> None:
    # GIVEN a round where bank-b's update was rejected (NaN) and the others accepted
    stack = MemoryStack()
    arn = await stack.start(config(min_clients=2), initial())
    await stack.control(arn, "open_round", "digits", 0)
    nan = {"w": np.full(3, np.nan, np.float32), "b": np.zeros(2, np.float32)}
    records = [
        await stack.submit("digits", "hospital-a", 0, local(0), 10),
        await stack.submit("digits", "bank-b", 0, nan, 30),
    ]
    await stack.deliver()
    rejected = await stack.store.get_item("digits", records[1].sk) or {}
    assert rejected["verdict"] == "rejected"
    # WHEN bank-b re-puts its item claiming `accepted` (B1) and hospital-a re-puts its own (B3)
    forged = {"task_name": "digits", **records[1].item(), "verdict": "accepted"}
    await stack.inbox.put(forged)
    await stack.inbox.put({"task_name": "digits", **records[0].item()})
    await stack.deliver()
    # THEN both decisions stand, and the accepted one keeps its seq-free verdict as decided
    assert (await stack.store.get_item("digits", records[1].sk) or {})["verdict"] == "rejected"
    accepted = await stack.store.get_item("digits", records[0].sk) or {}
    assert accepted["verdict"] == "accepted"
    # AND dc-c's honest update closes the round without bank-b: by hand (10*1 + 60*3)/70
    await stack.submit("digits", "dc-c", 0, local(2), 60)
    await stack.deliver()
    got = await stack.global_model("digits", 1)
    np.testing.assert_allclose(got["w"], np.full(3, 190 / 70, np.float32), rtol=0, atol=1e-6)


async def test_junk_under_a_victims_key_is_not_the_victims_word() -> None:
    # GIVEN round 0 open, and a squatter's item under dc-c's key naming hospital-a's object (B4)
    stack = MemoryStack()
    arn = await stack.start(config(), initial())
    await stack.control(arn, "open_round", "digits", 0)
    a = await stack.submit("digits", "hospital-a", 0, local(0), 10)
    squat = {**a.item(), "client_id": "dc-c", "sk": keys.update_sk("dc-c", "r00000000", 0)}
    await stack.inbox.put({"task_name": "digits", **squat})
    await stack.submit("digits", "bank-b", 0, local(1), 30)
    await stack.deliver()
    # THEN the round waits for dc-c: no version 1 yet
    assert (await stack.store.get_task("digits") or {})["head_version"] == 0
    # WHEN dc-c's own update arrives under a fresh update id
    blob = codec.encode(local(2))
    record = a.model_copy(update={
        "client_id": "dc-c", "update_id": "r00000000-2",
        "s3_key": keys.local_key("digits", "dc-c", 0, "r00000000-2"),
        "sha256": codec.sha256_bytes(blob), "size_bytes": len(blob), "num_examples": 60,
    })  # fmt: skip
    await stack.objects.put_bytes(record.s3_key, blob, record.sha256)
    await stack.inbox.put({"task_name": "digits", **record.item()})
    await stack.deliver()
    # THEN the round closes with all three, FedAvg by hand: w = 2.5
    got = await stack.global_model("digits", 1)
    np.testing.assert_array_equal(got["w"], np.full(3, 2.5, np.float32))
