"""In-memory `Queues`, and the topic's fan-out into them (`MemoryNotices` delivers here).

What SQS does that the client relies on is kept: a received message is invisible for
the queue's visibility timeout (or the receive's), then comes back with its receive
count one higher; each receive gives a new receipt handle and only the latest one
deletes or changes the message (an older one is stale: `False`, as `SqsQueues` answers);
a long poll returns as soon as a message is there, or empty after `wait_s` (20 at most);
at most 10 messages a receive; a delayed send is invisible for its delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

from fedasync.aws.queues import ReceivedMessage

_ids = itertools.count(1)


@dataclass
class _Message:
    message_id: str
    body: str
    visible_at: float
    attributes: dict[str, str] = field(default_factory=dict)
    receive_count: int = 0
    receipt: str | None = None


@dataclass
class _Queue:
    name: str
    visibility_s: int
    messages: list[_Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryQueues:
    """`Queues` in memory: queues made with `create`, addressed by URL."""

    def __init__(self, base_url: str = "memory://sqs/123456789012") -> None:
        self.base_url = base_url
        self.queues: dict[str, _Queue] = {}

    def create(self, name: str, visibility_s: int = 30) -> str:
        url = f"{self.base_url}/{name}"
        self.queues.setdefault(url, _Queue(name, visibility_s))
        return url

    async def url_of(self, name: str) -> str | None:
        return next((url for url, q in self.queues.items() if q.name == name), None)

    def deliver(
        self, queue_url: str, body: str, attributes: dict[str, str], delay_s: int = 0
    ) -> str:
        queue = self.queues[queue_url]
        message_id = f"m-{next(_ids)}"
        queue.messages.append(_Message(message_id, body, time.monotonic() + delay_s, attributes))
        queue.arrived.set()
        return message_id

    async def send(self, queue_url: str, body: str, *, delay_s: int = 0) -> str:
        return self.deliver(queue_url, body, {}, delay_s)

    def _take(self, queue: _Queue, max_messages: int, visibility_s: int) -> list[ReceivedMessage]:
        now = time.monotonic()
        taken: list[ReceivedMessage] = []
        for message in queue.messages:
            if len(taken) == max(1, min(max_messages, 10)):
                break
            if message.visible_at > now:
                continue
            message.receive_count += 1
            message.receipt = f"r-{next(_ids)}"
            message.visible_at = now + visibility_s
            taken.append(
                ReceivedMessage(
                    message_id=message.message_id,
                    receipt_handle=message.receipt,
                    body=message.body,
                    receive_count=message.receive_count,
                    attributes={"ApproximateReceiveCount": str(message.receive_count)},
                    message_attributes=dict(message.attributes),
                )
            )
        return taken

    async def receive(
        self,
        queue_url: str,
        *,
        max_messages: int = 1,
        wait_s: int = 20,
        visibility_s: int | None = None,
    ) -> list[ReceivedMessage]:
        queue = self.queues[queue_url]
        visibility = queue.visibility_s if visibility_s is None else visibility_s
        deadline = time.monotonic() + max(0, min(wait_s, 20))
        while True:
            taken = self._take(queue, max_messages, visibility)
            left = deadline - time.monotonic()
            if taken or left <= 0:
                return taken
            queue.arrived.clear()
            # woken by a send, or checked again soon (a visibility or a delay ending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.arrived.wait(), timeout=min(left, 0.05))

    def _holding(self, queue_url: str, receipt_handle: str) -> _Message | None:
        queue = self.queues.get(queue_url)
        if queue is None:
            return None
        return next((m for m in queue.messages if m.receipt == receipt_handle), None)

    async def delete(self, queue_url: str, receipt_handle: str) -> bool:
        message = self._holding(queue_url, receipt_handle)
        if message is None:
            return False
        self.queues[queue_url].messages.remove(message)
        return True

    async def change_visibility(self, queue_url: str, receipt_handle: str, timeout_s: int) -> bool:
        message = self._holding(queue_url, receipt_handle)
        if message is None:
            return False
        message.visible_at = time.monotonic() + timeout_s
        if timeout_s == 0:
            self.queues[queue_url].arrived.set()
        return True
