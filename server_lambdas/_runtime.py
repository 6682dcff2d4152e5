"""What a Lambda container keeps between invocations: one event loop and its AWS clients.

Handlers are synchronous (Lambda's contract); the ports are asyncio. Creating clients is
the slow part of a cold call, so, as Lambda guidance says for SDK clients, they are made
once per container and reused; here on one loop running in a daemon thread.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fedasync import logs
from fedasync.aws.session import AwsContext, Credentials, principal_credentials
from fedasync.resources import (
    ENV_BUCKET,
    ENV_ENDPOINT_URL,
    ENV_REGION,
    ENV_SERVER_TABLE,
    ENV_TABLE,
    ENV_TOPIC_ARN,
    ENV_TOPIC_SHARDS,
)
from fedasync.server.store import ServerStore, Where

T = TypeVar("T")


class _Runtime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # One context per (endpoint, region, credentials): on Lambda there is one; the
        # embedded stack runs both functions in one process, each as its own role.
        self._contexts: dict[tuple[str | None, str, Credentials | None], AwsContext] = {}

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="fedasync-lambda-loop", daemon=True
            ).start()
            self._loop = loop
        return self._loop

    async def _store(self, credentials: Credentials | None) -> ServerStore:
        endpoint = os.environ.get(ENV_ENDPOINT_URL) or None
        key = (endpoint, os.environ.get(ENV_REGION, "us-east-1"), credentials)
        aws = self._contexts.get(key)
        if aws is None:
            for stale in [k for k in self._contexts if k[:2] != key[:2]]:
                await self._contexts.pop(stale).__aexit__(None, None, None)
            aws = await AwsContext(key[0], key[1], credentials).__aenter__()
            self._contexts[key] = aws
        where = Where(
            table=os.environ[ENV_TABLE],
            server_table=os.environ.get(ENV_SERVER_TABLE, ""),
            bucket=os.environ[ENV_BUCKET],
            topic_arn=os.environ[ENV_TOPIC_ARN],
            topic_shards=int(os.environ.get(ENV_TOPIC_SHARDS, "1")),
        )
        return ServerStore(aws, where)

    def close(self) -> None:
        """Close the clients (at interpreter exit, or when a test tears its stack down)."""
        loop, contexts = self._loop, list(self._contexts.values())
        self._contexts.clear()
        if loop is None or loop.is_closed():
            return
        for aws in contexts:
            future = asyncio.run_coroutine_threadsafe(aws.__aexit__(None, None, None), loop)
            try:
                future.result(timeout=5)
            except Exception:  # best effort at shutdown
                future.cancel()

    def run(self, work: Callable[[ServerStore], Awaitable[T]]) -> T:
        """Run `work(store)` on the container's loop and wait for it (called from handlers)."""
        logs.configure()
        with self._lock:
            loop = self._ensure_loop()

        credentials = principal_credentials.get()  # the calling thread's, not the loop's

        async def job() -> T:
            return await work(await self._store(credentials))

        return asyncio.run_coroutine_threadsafe(job(), loop).result()


runtime = _Runtime()
atexit.register(runtime.close)
