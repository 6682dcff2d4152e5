"""SecAgg under faults on the embedded stack: what a silo or a redelivery does after a
phase has closed changes nothing the server decided.

Oracle: the survivors' quantised sum by hand (tests/integration/test_secagg_stack.py,
`quantised_sum`: Python integers from the stated quantiser).
"""

from __future__ import annotations

import asyncio

import numpy as np
import safetensors.numpy

from fedasync.core import codec, keys
from fedasync.core.replay_secagg import sum_key
from fedasync.core.secagg.notice import answer_key
from fedasync.server.tasks import start_task
from tests.integration.test_secagg_stack import (
    SILOS,
    ASilo,
    identities,
    initial_model,
    quantised_sum,
    run_silo,
    stack,
    task_config,
)
from tests.integration.test_server_sync import store_for, wait_execution

__all__ = ["stack"]  # the fixture, shared with test_secagg_stack


class Rewriter(ASilo):
    """Once U3 is fixed (the consistency notice), rewrites its masked input object with
    other words of the right length in a valid object (its header kept)."""

    async def _answer(self, notice, session):
        if notice.phase == "consistency":
            s3 = await self.aws.s3()
            key = answer_key(notice.task_name, notice.round_id, "masked_input", self.client_id)
            blob = self.puts[f"{self.client_id}/masked_input"][0]
            words = safetensors.numpy.load(blob)["masked_input"]
            body = blob[: -words.nbytes] + words[::-1].astype("<u4").tobytes()
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return await super()._answer(notice, session)


async def test_a_masked_input_rewritten_after_u3_closed_changes_nothing(stack):
    # GIVEN a SecAgg round of 5 silos, bank-3 rewriting its masked input once U3 is fixed
    private, public = identities()
    e = stack.endpoints
    ASilo.puts = {}
    silos = [
        (Rewriter if c == "bank-3" else ASilo)(
            stack.principal_aws(f"client:{c}"), e.bucket, c, private[c], public, _train(c)
        )
        for c in SILOS
    ]
    store = store_for(stack)
    arn = await start_task(store, e.state_machine_arn, task_config(public), initial_model())
    runners = [asyncio.create_task(run_silo(stack, s, None)) for s in silos]
    try:
        desc = await wait_execution(stack, arn, timeout_s=120)
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    # THEN the round closed with all five, and the sum is the one of what was accepted:
    # the survivors' quantised sum, exactly (the rewrite is not in it)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    result = (await store.get_item("vault", keys.round_sk(0)))["result"]
    assert result["secagg"]["survivors"] == list(SILOS)
    got = codec.decode(await store.get_object(sum_key("vault", 0)))["sum"]
    np.testing.assert_array_equal(got, np.array(quantised_sum(list(SILOS))))


def _train(client_id):
    from tests.integration.test_secagg_stack import EXAMPLES, local_model

    async def train(global_w):
        return local_model(global_w, client_id), EXAMPLES[client_id]

    return train
