"""The server on in-memory ports (`fedasync.aws.memory`): no AWS, no moto, no state machine.

The test plays the state machine (it marks the task RUNNING, mints task tokens and sends
the wait states' control messages) and the silos (an object under their own prefix, then
their record in the inbox); the server's own code decides, through the same entry points
the handlers call (`fedasync.server.control.on_control`, `fedasync.server.stream`). The
ports are held to the AWS implementations' contract tests (tests/integration/test_ports_*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedasync.aws.memory import (
    MemoryExecutions,
    MemoryNotices,
    MemoryObjects,
    MemoryRecords,
    MemoryTables,
)
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import ControlMessage, UpdateRecord
from fedasync.deployment import Deployment
from fedasync.server import stream
from fedasync.server.control import on_control
from fedasync.server.store import Ports, ServerStore
from fedasync.server.tasks import start_task

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:fedasync-fl-task"


@dataclass
class MemoryStack:
    where: Deployment = field(default_factory=lambda: Deployment(prefix="unit"))
    tables: MemoryTables = field(default_factory=MemoryTables)
    notices: MemoryNotices = field(default_factory=MemoryNotices)
    executions: MemoryExecutions = field(default_factory=MemoryExecutions)
    tokens: int = 0

    def __post_init__(self) -> None:
        self.objects = MemoryObjects(self.where.bucket)
        self.inbox = MemoryRecords(self.tables, self.where.table)
        self.server = MemoryRecords(self.tables, self.where.server_table)
        self.store = ServerStore.on(
            Ports(self.inbox, self.server, self.objects, self.notices, self.executions),
            self.where,
        )

    async def start(self, cfg: TaskConfig, initial: dict[str, np.ndarray]) -> str:
        """`task start`, then the state machine's first state: the task RUNNING."""
        arn = await start_task(self.store, MACHINE, cfg, initial)
        op = self.server.update_op(
            cfg.task_name, keys.TASK_SK, {"status": "RUNNING", "execution_arn": arn}
        )
        assert await self.server.update(op)
        return arn

    async def control(self, arn: str, kind: str, task_name: str, round_id: int | None) -> str:
        """A wait state of the execution sends `kind` with a fresh token; the server acts."""
        self.tokens += 1
        token = f"token-{self.tokens}"
        message: dict[str, Any] = {"kind": kind, "task_name": task_name, "task_token": token}
        if round_id is not None:
            message["round_id"] = round_id
        self.executions.wait(arn, message, token)
        await on_control(self.store, ControlMessage.parse(message))
        return token

    async def submit(
        self, task_name: str, client_id: str, round_id: int, weights: dict[str, np.ndarray],
        num_examples: int,
    ) -> UpdateRecord:  # fmt: skip
        """A sync silo's upload and record for round `round_id`, as a client writes them."""
        update_id = f"r{round_id:08d}"
        return await self._write(task_name, client_id, round_id, round_id, update_id, weights,
                                 num_examples)  # fmt: skip

    async def submit_async(
        self, task_name: str, client_id: str, base_version: int, weights: dict[str, np.ndarray],
        num_examples: int = 10, update_id: str | None = None,
    ) -> UpdateRecord:  # fmt: skip
        """An async silo's upload and record, trained on version `base_version`."""
        update_id = update_id or f"{client_id}-v{base_version}"
        return await self._write(task_name, client_id, base_version, None, update_id, weights,
                                 num_examples)  # fmt: skip

    async def _write(
        self, task_name: str, client_id: str, base_version: int, round_id: int | None,
        update_id: str, weights: dict[str, np.ndarray], num_examples: int,
    ) -> UpdateRecord:  # fmt: skip
        """The object under the silo's own prefix, then its record in the inbox."""
        blob = codec.encode(weights)
        record = UpdateRecord(
            task_name=task_name,
            client_id=client_id,
            update_id=update_id,
            base_version=base_version,
            round_id=round_id,
            s3_key=keys.local_key(task_name, client_id, base_version, update_id),
            sha256=codec.sha256_bytes(blob),
            size_bytes=len(blob),
            num_examples=num_examples,
        )
        await self.objects.put_bytes(record.s3_key, blob, record.sha256)
        assert await self.inbox.put({"task_name": task_name, **record.item()})
        return record

    async def deliver(self) -> None:
        """The inbox's new stream records, as one batch to the aggregate function's logic
        (`server_lambdas/aggregate.py`: the leading run, then record by record)."""
        records = self.tables.take_stream(self.where.table)
        done = await stream.decide_leading_run(self.store, records)
        for raw in records[done:]:
            work = stream.work_of(raw)
            if work is not None:
                await stream.handle(self.store, work)

    async def global_model(self, task_name: str, version: int) -> dict[str, np.ndarray]:
        return codec.decode(await self.objects.get_bytes(keys.global_key(task_name, version)))
