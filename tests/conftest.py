"""Shared fixtures: one moto server for the whole session, one prefix per test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from fedasync import logs
from fedasync.aws.session import AwsContext
from fedasync.local.server import LocalMotoServer

pytest_plugins = ["tests.call_audit"]

Waiter = Callable[..., Awaitable[Any]]


@pytest.hookimpl(trylast=True)  # after pytest-randomly has shuffled
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A `runs_last` test moves behind the other tests of its class (or module), and the
    tests of an `in_file_order` class run in the order the file defines them.

    Such a test closes a scenario the others share (it finishes their task) or sums up
    what they did; a class in file order plays one scenario step by step (round after
    round of one task). Every other test runs in whatever order the run chose.
    """
    _classes_in_file_order(items)
    end: dict[pytest.Item | pytest.Collector, int] = {}
    for index, item in enumerate(items):
        for node in item.listchain():
            end[node] = index
    position = {id(item): index for index, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[float, int]:
        at = position[id(item)]
        if item.get_closest_marker("runs_last") is None or item.parent is None:
            return (at, at)
        return (end[item.parent] + 0.5, at)

    items.sort(key=key)


def _classes_in_file_order(items: list[pytest.Item]) -> None:
    """Put the tests of each `in_file_order` class back in definition order, in the slots
    the shuffle gave that class (its place among the other tests stays shuffled)."""
    slots: dict[pytest.Class, list[int]] = {}
    for index, item in enumerate(items):
        cls = item.getparent(pytest.Class)
        if cls is not None and cls.get_closest_marker("in_file_order") is not None:
            slots.setdefault(cls, []).append(index)
    for indices in slots.values():
        members = sorted((items[i] for i in indices), key=lambda it: it.location[1] or 0)
        for index, item in zip(indices, members, strict=True):
            items[index] = item


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The shuffle's seed, also under -q (pytest-randomly prints it only in the header)."""
    if config.pluginmanager.has_plugin("randomly"):
        seed = config.getoption("randomly_seed", default=None)
        terminalreporter.write_line(
            f"test order shuffled by pytest-randomly; this order again: --randomly-seed={seed}"
        )


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts with logging as a new process has it: the first configure counts.

    `logs.configure` is first-call-wins, so without this the level a test sees would be the
    one of whichever earlier test configured first (a CLI's WARNING or ERROR filters the
    info events another test captures): an order dependence. Until this test's first
    configure, lines go as a configured process sends them (JSON on stderr), not to
    structlog's unconfigured default (stdout, where a CLI under CliRunner prints its JSON).
    """
    logs.configure(force=True)
    logs._configured = False
    yield
    logs.configure(force=True)
    logs._configured = False


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalMotoServer]:
    server = LocalMotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh resource prefix, so tests sharing the server never see each other's data."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def aws(moto_server: LocalMotoServer) -> AsyncIterator[AwsContext]:
    async with AwsContext(moto_server.endpoint_url) as context:
        yield context


async def _wait_until(
    probe: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05
) -> Any:
    """Poll `probe` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


@pytest.fixture
def wait_until() -> Waiter:
    return _wait_until
