"""In-memory `Objects`, `Notices` and `Executions` (see `fedasync.aws.memory`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedasync.aws.executions import Execution, ExecutionNotFoundError, execution_arn_for
from fedasync.aws.memory.queues import MemoryQueues
from fedasync.aws.ranged import Ranged
from fedasync.aws.transfer import MISSING, PARTS_IN_FLIGHT, Advance, CorruptDownloadError
from fedasync.core.errors import (
    ChecksumMismatchError,
    MissingObjectError,
    PayloadTooLargeError,
    RegistryError,
    SchemaError,
)
from fedasync.core.messages import GlobalModelNotice
from fedasync.resources import NOTICE_FILTER_ATTRIBUTE, topic_shard


@dataclass
class _Object:
    data: bytes
    metadata: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    version: int = 0  # S3's ETag, in effect: a rewrite makes a new one


class MemoryObjects:
    """`Objects` in memory: one bucket's objects with their metadata."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.objects: dict[str, _Object] = {}
        self.version = 0

    async def upload_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        part_size: int,
        on_bytes: Advance | None = None,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        local_update: bool = True,
    ) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        for start in range(0, len(data), part_size):
            if on_bytes is not None:
                on_bytes(len(data[start : start + part_size]))
        tags = {"fedasync-kind": "local-update"} if local_update else {}
        self._write(key, _Object(data, {"sha256": sha256}, tags))

    def _write(self, key: str, obj: _Object) -> None:
        self.version += 1
        obj.version = self.version
        self.objects[key] = obj

    async def ranged(self, key: str, *, named_by_silo: bool = False) -> Ranged:
        return MemoryRanged(self, key, named_by_silo)

    async def download_file(
        self,
        key: str,
        dest: Path,
        *,
        sha256: str,
        max_bytes: int | None = None,
        on_bytes: Advance | None = None,
    ) -> int:
        found = self.objects.get(key)
        if found is None:
            raise CorruptDownloadError(
                f"global model {key!r} is missing from bucket {self.bucket!r}",
                key=key, expected=sha256, actual=MISSING,
            )  # fmt: skip
        if max_bytes is not None and len(found.data) > max_bytes:
            raise PayloadTooLargeError(
                f"global model {key!r} is {len(found.data)} bytes; the limit is {max_bytes}"
            )
        actual = hashlib.sha256(found.data).hexdigest()
        if actual != sha256:
            raise CorruptDownloadError(
                f"global model {key!r} is not the announced one",
                key=key, expected=sha256, actual=actual,
            )  # fmt: skip
        await asyncio.to_thread(dest.write_bytes, found.data)
        if on_bytes is not None:
            on_bytes(len(found.data))
        return len(found.data)

    def found(self, key: str, *, named_by_silo: bool) -> _Object:
        found = self.objects.get(key)
        if found is None:
            error = MissingObjectError if named_by_silo else RegistryError
            raise error(f"object {key!r} is missing from the model bucket (S3 answered NoSuchKey)")
        return found

    async def get_bytes(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        found = self.found(key, named_by_silo=named_by_silo)
        if max_bytes is not None and len(found.data) > max_bytes:
            raise PayloadTooLargeError(
                f"object {key!r} is {len(found.data)} bytes; the limit is {max_bytes}"
            )
        return found.data

    async def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        for key in keys:
            yield await self.get_bytes(key, max_bytes, named_by_silo=named_by_silo)

    async def put_bytes(self, key: str, data: bytes, sha256: str) -> None:
        self._write(key, _Object(bytes(data), {"sha256": sha256}))

    async def put_bytes_once(self, key: str, data: bytes, sha256: str) -> tuple[bytes, str]:
        found = self.objects.get(key)
        if found is not None:
            return found.data, hashlib.sha256(found.data).hexdigest()
        await self.put_bytes(key, data, sha256)
        return data, sha256


class MemoryRanged:
    """`Ranged` in memory: the version the first read saw pins the rest, as S3's ETag
    does (`IfMatch`); an empty object has no range to read, as S3 answers InvalidRange."""

    def __init__(self, objects: MemoryObjects, key: str, named_by_silo: bool) -> None:
        self._objects, self.key, self._silo = objects, key, named_by_silo
        self._version: int | None = None
        self.size = 0
        self.head = b""

    async def read(self, begin: int, end: int) -> bytes:
        found = self._objects.found(self.key, named_by_silo=self._silo)
        if self._version is None:
            if not found.data:
                raise SchemaError(f"object {self.key!r} is empty: no safetensors header")
            self._version, self.size = found.version, len(found.data)
            self.head = found.data[begin:end] if begin == 0 else b""
        elif found.version != self._version:
            raise ChecksumMismatchError(
                f"object {self.key!r} changed while it was being read (ETag no longer "
                f"{self._version})"
            )
        return found.data[begin:end]

    async def sha256(self, chunk_bytes: int) -> str:
        digest = hashlib.sha256()
        for begin in range(0, self.size, chunk_bytes):
            digest.update(await self.read(begin, min(begin + chunk_bytes, self.size)))
        return digest.hexdigest()


class MemoryNotices:
    """`Notices` in memory: each notice sent, with its recipients, per topic shard; with
    `queues` and `subscriptions` (client id -> queue URL), delivered as SNS delivers a raw
    message through a filter policy: to the queues of the clients it names, once each,
    with the recipients as a String.Array attribute and the task's name."""

    def __init__(
        self,
        topic_shards: int = 1,
        queues: MemoryQueues | None = None,
        subscriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.topic_shards = topic_shards
        self.queues = queues
        self.subscriptions = dict(subscriptions or {})
        self.sent: list[tuple[GlobalModelNotice, tuple[str, ...]]] = []

    async def publish(self, notice: GlobalModelNotice, client_ids: tuple[str, ...]) -> int:
        shards: dict[int, list[str]] = {}
        for client_id in client_ids:
            shards.setdefault(topic_shard(client_id, self.topic_shards), []).append(client_id)
        for _, recipients in sorted(shards.items()):
            self.sent.append((notice, tuple(recipients)))
            attributes = {
                NOTICE_FILTER_ATTRIBUTE: json.dumps(recipients),
                "task_name": notice.task_name,
            }
            for client_id in recipients:
                url = self.subscriptions.get(client_id)
                if self.queues is not None and url is not None:
                    self.queues.deliver(url, notice.to_json(), attributes)
        return len(shards)


@dataclass
class _Wait:
    execution_arn: str
    answer: dict[str, Any] | None = None
    failure: tuple[str, str] | None = None
    heartbeats: int = 0


class MemoryExecutions:
    """`Executions` in memory. A test plays the state machine: `wait` mints a task token
    for an execution's wait state and records the message that state sent (what
    `sent_messages` gives back, newest first); an answered token is spent."""

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.inputs: dict[str, dict[str, Any]] = {}
        self.waits: dict[str, _Wait] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}

    async def start(self, state_machine_arn: str, name: str, task_input: Mapping[str, Any]) -> str:
        arn = execution_arn_for(state_machine_arn, name)
        if arn not in self.executions:
            self.executions[arn] = Execution(execution_arn=arn, status="RUNNING")
            self.inputs[arn] = dict(task_input)
        return arn

    def wait(self, execution_arn: str, message: dict[str, Any], token: str) -> None:
        """The execution's wait state sends `message` (with `token` in it)."""
        self.waits[token] = _Wait(execution_arn)
        self.messages.setdefault(execution_arn, []).append(message)

    async def describe(self, execution_arn: str) -> Execution:
        found = self.executions.get(execution_arn)
        if found is None:
            raise RegistryError(f"execution {execution_arn!r} does not exist")
        return found

    async def status(self, execution_arn: str) -> str:
        found = self.executions.get(execution_arn)
        return found.status if found is not None else "NONE"

    async def stop(self, execution_arn: str, error: str, cause: str) -> bool:
        found = self.executions.get(execution_arn)
        if found is None:
            return False
        self.executions[execution_arn] = Execution(
            execution_arn=execution_arn, status="ABORTED", error=error, cause=cause
        )
        return True

    def _live(self, token: str) -> _Wait | None:
        wait = self.waits.get(token)
        return wait if wait is not None and wait.answer is None and wait.failure is None else None

    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.answer = dict(output)
        return True

    async def send_failure(self, token: str, error: str, cause: str) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.failure = (error, cause)
        return True

    async def send_heartbeat(self, token: str) -> bool:
        wait = self._live(token)
        if wait is None:
            return False
        wait.heartbeats += 1
        return True

    async def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]:
        if execution_arn not in self.executions:
            raise ExecutionNotFoundError(
                f"execution {execution_arn!r} is unknown to Step Functions"
            )
        for body in reversed(self.messages.get(execution_arn, [])):
            yield body

    async def find_state_machine(self, name: str) -> str | None:
        return None
