"""The embedded stack cuts off an invocation past its function's timeout or memory size,
and the event source mapping then does what Lambda's does: the stream retries the batch,
an SQS message comes back after the queue's visibility timeout."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from fedasync.aws.session import AwsContext
from fedasync.deployment import Deployment
from fedasync.limits import AGGREGATE_LIMITS, CONTROL_LIMITS, FunctionLimits
from fedasync.local.events import LocalLambdaContext
from fedasync.local.invoke import InvocationKilledError, invoke_limited
from fedasync.local.provision import provision
from fedasync.local.queue_pump import QueuePump
from fedasync.local.server import LocalMotoServer
from fedasync.local.stack import EmbeddedStack
from fedasync.local.stream_pump import StreamPump
from tests.integration.test_stack_pumps import Recorder, put

TIGHT = FunctionLimits(timeout_s=0.5, memory_mb=32)
MB = 1024 * 1024


class SlowOnce:
    """A handler whose first invocation works for `work_s` in small steps (a cut-off
    stops it between steps) or holds `hold_mb` of memory; later ones return at once."""

    def __init__(self, work_s: float = 0.0, hold_mb: int = 0) -> None:
        self.work_s, self.hold_mb = work_s, hold_mb
        self.calls: list[dict[str, Any]] = []  # per invocation: records, steps, finished
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self._lock:
            call = {"records": len(event["Records"]), "steps": 0, "finished": False,
                    "memory_limit_in_mb": context.memory_limit_in_mb}  # fmt: skip
            self.calls.append(call)
            first = len(self.calls) == 1
        if first and self.hold_mb:
            held = np.ones(self.hold_mb * MB // 8)  # touched pages: resident
            time.sleep(0.3)
            del held
        if first and self.work_s:
            deadline = time.monotonic() + self.work_s
            while time.monotonic() < deadline:
                time.sleep(0.01)
                call["steps"] += 1
        call["finished"] = True
        return {"batchItemFailures": []}


@pytest.fixture
async def endpoints(aws: AwsContext, prefix: str) -> Deployment:
    return await provision(aws, Deployment(prefix=prefix))


async def test_invocation_past_its_timeout_fails_as_lambdas_does() -> None:
    # GIVEN a function with a 0.5 s timeout and a handler that would work for 3 s
    handler = SlowOnce(work_s=3.0)
    started = time.monotonic()
    # WHEN it is invoked
    with pytest.raises(InvocationKilledError) as failed:
        await invoke_limited(handler, {"Records": [{}]}, context(TIGHT), TIGHT, function="f")
    # THEN the invocation fails at the deadline with Lambda's message, well before 3 s
    assert failed.value.reason == "timeout"
    assert failed.value.detail == "Task timed out after 0.50 seconds"
    assert time.monotonic() - started < 2.5
    # AND the handler's code was stopped, not left to run to its end
    assert handler.calls[0]["finished"] is False
    assert handler.calls[0]["steps"] < 250  # 3 s of 10 ms steps would be ~300


async def test_invocation_past_its_memory_size_fails_out_of_memory() -> None:
    # GIVEN a function with 32 MB and a handler that holds 160 MB for 0.3 s
    handler = SlowOnce(hold_mb=160)
    # WHEN it is invoked
    with pytest.raises(InvocationKilledError) as failed:
        await invoke_limited(handler, {"Records": [{}]}, context(TIGHT), TIGHT, function="f")
    # THEN it fails as out of memory, naming what it used against the memory size
    assert failed.value.reason == "out_of_memory"
    assert "Runtime.OutOfMemory" in failed.value.detail
    assert "memory size 32 MB" in failed.value.detail


async def test_invocation_within_its_limits_returns_the_handlers_answer() -> None:
    # GIVEN the deployed aggregate limits and a handler that answers at once
    handler = SlowOnce()
    # WHEN it is invoked THEN its answer comes back unchanged
    answer = await invoke_limited(
        handler,
        {"Records": [{}]},
        context(AGGREGATE_LIMITS),
        AGGREGATE_LIMITS,
        function="aggregate",
    )
    assert answer == {"batchItemFailures": []}
    assert handler.calls == [
        {"records": 1, "steps": 0, "finished": True, "memory_limit_in_mb": 3008}
    ]


async def test_stream_batch_cut_off_by_the_timeout_is_retried_and_bisected(
    aws: AwsContext, endpoints: Deployment, wait_until: Any
) -> None:
    # GIVEN two records, and a stream pump whose function times out after 0.5 s
    # (the deployed mapping bisects a failed batch: BisectBatchOnFunctionError)
    await put(aws, endpoints.table, "UPDATE#00000000#a")
    await put(aws, endpoints.table, "UPDATE#00000000#b")
    handler = SlowOnce(work_s=3.0)
    pump = StreamPump(aws, endpoints.stream_arn, handler, limits=TIGHT)
    pump.start()
    try:
        # WHEN the first invocation runs past the timeout
        await wait_until(lambda: len(handler.calls) >= 3)
        # AND a later record arrives (the normal path)
        await put(aws, endpoints.table, "UPDATE#00000000#c")
        await wait_until(lambda: len(handler.calls) >= 4)
    finally:
        await pump.stop()
    # THEN the timed-out batch failed as a function error: it was split and each half
    # retried and succeeded; nothing was discarded; the later record came once
    assert [c["records"] for c in handler.calls] == [2, 1, 1, 1]
    assert [c["finished"] for c in handler.calls] == [False, True, True, True]
    assert pump.failed_batches == []


async def test_sqs_message_cut_off_by_memory_comes_back_after_its_visibility_timeout(
    aws: AwsContext, prefix: str, wait_until: Any
) -> None:
    # GIVEN a queue with a 2 s visibility timeout, one message, and a pump whose function
    # has 32 MB while the handler's first invocation holds 160 MB
    sqs = await aws.sqs()
    url = (
        await sqs.create_queue(QueueName=f"{prefix}-oom", Attributes={"VisibilityTimeout": "2"})
    )["QueueUrl"]
    await sqs.send_message(QueueUrl=url, MessageBody="big")
    handler = Recorder()
    big = SlowOnce(hold_mb=160)
    seen: list[float] = []

    def both(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(time.monotonic())
        handler(event, context)
        return big(event, context)

    pump = QueuePump(aws, url, both, limits=TIGHT)
    pump.start()
    try:
        # WHEN the first invocation is cut off out of memory
        await wait_until(lambda: len(big.calls) >= 2, timeout_s=15)
        await wait_until(lambda: big.calls[1]["finished"])
    finally:
        await pump.stop()
    # THEN the message was left, came back once its visibility timeout ran out (the
    # second receive), and was then deleted after a successful invocation
    records = [r for e in handler.events for r in e["Records"]]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in records] == ["1", "2"]
    assert seen[1] - seen[0] >= 1.5  # the visibility timeout, not an immediate retry
    assert [c["memory_limit_in_mb"] for c in big.calls] == [32, 32]
    left = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert left.get("Messages", []) == []


async def test_embedded_stack_uses_the_deployed_limits_unless_a_test_gives_its_own(
    moto_server: LocalMotoServer, prefix: str, wait_until: Any
) -> None:
    # GIVEN an embedded stack with the default limits, and one with a tight aggregate
    handler = SlowOnce()
    spec = Deployment(prefix=prefix)
    async with EmbeddedStack(
        spec, endpoint_url=moto_server.endpoint_url, aggregate_handler=SlowOnce()
    ) as stack:
        # THEN the pumps carry the deployed functions' numbers (infra/server.py's)
        assert stack.stream_pump is not None and stack.control_pump is not None
        assert stack.stream_pump.limits == AGGREGATE_LIMITS == FunctionLimits(600, 3008)
        assert stack.control_pump.limits == CONTROL_LIMITS == FunctionLimits(60, 1024)
    tight = Deployment(prefix=f"{prefix}b")
    async with EmbeddedStack(
        tight,
        endpoint_url=moto_server.endpoint_url,
        aggregate_handler=handler,
        control_handler=None,
        function_limits={"aggregate": TIGHT},
    ) as stack:
        assert stack.stream_pump is not None and stack.stream_pump.limits == TIGHT
        # WHEN an update is written, THEN a quick handler is invoked once, unaffected
        await put(stack.aws, stack.endpoints.table, "UPDATE#00000000#a")
        await wait_until(lambda: handler.calls)
    assert handler.calls == [{"records": 1, "steps": 0, "finished": True, "memory_limit_in_mb": 32}]


def context(limits: FunctionLimits) -> LocalLambdaContext:
    return LocalLambdaContext("f", memory_limit_in_mb=limits.memory_mb, timeout_s=limits.timeout_s)
