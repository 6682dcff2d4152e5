"""A silo's half-precision delta upload through the real client loop on the embedded
stack (the test plays the server, as tests/integration/test_client_run.py does): the
notice's update_encoding makes the silo send half(local - global), marked and hashed as
sent; a delta beyond float16's range stops the run with nothing sent."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from structlog.testing import capture_logs

from client.run import run_client
from client.trainers import TrainResult
from client.trainers.numpy_trainer import NumpyTrainer
from fedasync.core import codec
from fedasync.core.config_encoding import UpdateEncoding
from fedasync.core.deltas import DELTA_DTYPE_KEY, DELTA_OF_KEY, DeltaOverflowError, header_metadata
from fedasync.core.messages import UpdateRecord
from tests.integration.test_client_run import (  # noqa: F401 - fixtures
    RUN_TIMEOUT_S,
    config,
    end_task_after,
    server,
    silo,
    stack,
)
from tests.unit.test_deltas import nearest_by_table


class Remembering(NumpyTrainer):
    """The numpy trainer, keeping the model its last fit returned (the silo's local model)."""

    def __init__(self, jump: float = 0.0) -> None:
        super().__init__()
        self.jump = jump
        self.last: codec.Weights | None = None

    def fit(self, weights, x, y, *, epochs, seed):
        result = super().fit(weights, x, y, epochs=epochs, seed=seed)
        moved = {k: (v + np.float32(self.jump)).astype(v.dtype) for k, v in result.weights.items()}
        self.last = moved
        return TrainResult(moved, result.num_examples, result.metrics)


async def _announce_with_deltas(server, version: int, dtype: str):
    notice = await server.put_global(version)
    notice = notice.model_copy(update={"update_encoding": UpdateEncoding(dtype=dtype)})
    await server.publish(notice)
    return notice


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
async def test_the_silo_uploads_the_half_delta_against_the_notice_s_model(
    stack, server, silo, wait_until, dtype
):
    # GIVEN round 1 announced with update_encoding {dtype}
    await _announce_with_deltas(server, 1, dtype)
    trainer = Remembering()
    # WHEN the silo trains and uploads, and the task then ends
    task = asyncio.create_task(run_client(config(stack), trainer=trainer, data=silo))
    await end_task_after(server, server.updates, wait_until, 1)
    assert (await asyncio.wait_for(task, RUN_TIMEOUT_S)).outcome == "final"
    # THEN its record says delta_dtype, and the object hashes to the record's SHA-256
    [item] = await server.updates()
    record = UpdateRecord.parse({k: v for k, v in item.items() if k != "sk"})
    assert record.delta_dtype == dtype
    data = await server.get_bytes(record.s3_key, record.sha256)
    assert record.size_bytes == len(data)
    # AND it holds half(local - global v1), rounded to nearest even (by table), marked a
    # delta of version 1
    assert header_metadata(data, "t")[DELTA_OF_KEY] == "1"
    assert header_metadata(data, "t")[DELTA_DTYPE_KEY] == dtype
    delta, global_w = codec.decode(data), NumpyTrainer().init_weights(seed=1)
    assert trainer.last is not None
    for name, g in global_w.items():
        d64 = trainer.last[name].astype(np.float64) - g.astype(np.float64)
        assert str(delta[name].dtype) == dtype
        np.testing.assert_array_equal(delta[name].astype(np.float64), nearest_by_table(d64, dtype))
    # AND its data is half the float32 model's
    full = codec.encode(trainer.last)
    assert (
        len(data) - 8 - int.from_bytes(data[:8], "little")
        == (len(full) - 8 - int.from_bytes(full[:8], "little")) // 2
    )


async def test_a_delta_beyond_fp16_range_stops_the_run_and_nothing_is_sent(stack, server, silo):
    # GIVEN round 1 announced with fp16 deltas, and a trainer that moves every weight by 1e5
    await _announce_with_deltas(server, 1, "float16")
    # WHEN the silo trains
    refused = pytest.raises(DeltaOverflowError, match=r"beyond float16's largest value 65504")
    with capture_logs() as logs, refused:
        await asyncio.wait_for(
            run_client(config(stack), trainer=Remembering(jump=1e5), data=silo), RUN_TIMEOUT_S
        )
    # THEN it said why, and no object and no record were sent
    assert any(e["event"] == "client.delta_overflow" for e in logs)
    assert await server.local_objects() == []
    assert await server.updates() == []
