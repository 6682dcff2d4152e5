"""A control message whose handling fails transiently is retried within seconds (issue 13).

On AWS a failed SQS message waits out the queue's visibility timeout (360 s for the control
queue, longer than the CloseRound and Finalize waits); the control handler shortens it for
the failed message. The embedded pump leaves failed messages to the queue as Lambda does,
so the retry seen here is the queue's, not the pump's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import server_lambdas.control as control_lambda
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import ControlMessage
from fedasync.resources import CONTROL_VISIBILITY_S
from fedasync.server.store import ServerStore
from fedasync.server.tasks import start_task
from server_lambdas._retry import retry_delay_s
from tests.integration.test_server_sync import (
    CLIENTS,
    clients_for,
    initial_model,
    run_client,
    stack,  # noqa: F401 - the fixture
    store_for,
    wait_execution,
)


@pytest.mark.parametrize(
    ("receives", "delay"), [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60), (0, 2)]
)
def test_retry_delay_doubles_from_two_seconds_up_to_a_minute(receives: int, delay: int) -> None:
    # GIVEN a failed message's receive count WHEN its retry is scheduled THEN it waits
    # 2 s after its first failure, doubling with each, never more than 60 s
    assert retry_delay_s(receives) == delay


async def test_a_transient_open_round_failure_is_retried_in_seconds(
    stack: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sync task whose first open_round handling fails once (a transient fault:
    # the next delivery succeeds)
    real = control_lambda.on_control
    attempts: list[float] = []

    async def flaky(store: ServerStore, msg: ControlMessage) -> Any:
        if msg.kind == "open_round":
            attempts.append(time.time())
            if len(attempts) == 1:
                raise ConnectionError("transient: the table did not answer")
        return await real(store, msg)

    monkeypatch.setattr(control_lambda, "on_control", flaky)
    cfg = TaskConfig.parse(
        {"task_name": "retry", "clients": list(CLIENTS), "rounds": 1, "round_timeout_s": 120}
    )
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
    # WHEN every client answers the round
    await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients_for(stack))), 90)
    desc = await wait_execution(stack, arn)
    # THEN the round was opened by the second delivery of the same message, about 2 s
    # after the failure (not after the queue's 360 s), and the task succeeded
    assert len(attempts) == 2
    gap = attempts[1] - attempts[0]
    assert retry_delay_s(1) - 0.5 <= gap < 30 < CONTROL_VISIBILITY_S
    item = await store.get_item("retry", keys.round_sk(0)) or {}
    assert float(item["opened_at"]) >= attempts[1]
    assert desc["status"] == "SUCCEEDED"
