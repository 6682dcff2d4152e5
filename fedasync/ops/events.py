"""The ledger's I/O edges: export a task's ledger and objects, load objects for a replay.

`fedasync.core.ledger` turns items into events and `fedasync.core.replay` rebuilds the
versions; this module reads the table and the bucket (embedded stack or AWS, by endpoint)
and the local folder a replay reads objects from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from fedasync.core import keys
from fedasync.core.errors import RegistryError, SchemaError
from fedasync.core.items.ledger import entries
from fedasync.core.ledger import Event, build_ledger, dump_ledger
from fedasync.core.replay import Loader
from fedasync.core.replay_secagg import release_key, sum_key
from fedasync.server.store import ServerStore

log = structlog.get_logger()


async def task_items(store: ServerStore, task_name: str) -> list[dict[str, Any]]:
    task = await store.get_task(task_name)
    if task is None:
        raise SchemaError(f"task {task_name!r} does not exist in table {store.where.table!r}")
    updates, rounds = await asyncio.gather(
        store.query_prefix(task_name, keys.UPDATE_PREFIX),
        store.query_prefix(task_name, keys.ROUND_PREFIX),
    )
    return [task, *updates, *rounds]


async def export_ledger(store: ServerStore, task_name: str) -> list[Event]:
    """The task's ledger as the table records it (works on any deployment)."""
    events = build_ledger(await task_items(store, task_name), bucket=store.where.bucket)
    log.info("events.exported", task_name=task_name, events=len(events))
    return events


def object_keys(events: Iterable[Event]) -> list[str]:
    """Every object a replay reads or checks: initial, updates, versions, final."""
    events = list(events)
    out: list[str] = []
    name: str | None = None
    for e in entries(events):
        if e.kind == "task":
            out.append(str((e.initial or {})["s3_key"]))
            name = e.task_name
        elif e.kind == "update" and e.accepted:
            out.append(str((e.record or {})["s3_key"]))
    versions = sorted(int(e.version) for e in entries(events, "version"))
    if name is not None:
        out += [keys.global_key(name, v) for v in versions]
        # a SecAgg round is rebuilt from the sum the server recorded
        rounds = [e for e in entries(events, "round") if isinstance(e.secagg, dict)]
        out += [sum_key(name, int(e.round_id)) for e in rounds]
        # ... and, under central DP, from its recorded release
        out += [
            release_key(name, int(e.round_id)) for e in rounds if e.secagg.get("release_sha256")
        ]
    return list(dict.fromkeys(out))


async def export_objects(store: ServerStore, events: Iterable[Event], folder: Path) -> int:
    """Copy the objects a replay needs into `folder/<s3 key>`; returns how many."""
    wanted = object_keys(list(events))
    semaphore = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with semaphore:
            data = await store.get_object(key)
        target = _inside(folder, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, data)

    await asyncio.gather(*(one(k) for k in wanted))
    return len(wanted)


def write_ledger(events: Iterable[Event], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_ledger(events), encoding="utf-8")
    return path


def _inside(folder: Path, key: str) -> Path:
    """`folder/key`, refusing keys that would escape the folder (`..`, absolute paths)."""
    root = folder.resolve()
    target = (root / key).resolve()
    if not target.is_relative_to(root) or target == root:
        raise SchemaError(f"object key {key!r} escapes the objects folder")
    return target


def folder_loader(folder: Path) -> Loader:
    def load(key: str) -> bytes:
        path = _inside(folder, key)
        if not path.is_file():
            raise RegistryError(f"object {key!r} is not in {str(folder)!r}")
        return path.read_bytes()

    return load
