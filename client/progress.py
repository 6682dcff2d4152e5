"""Progress of one run: rich bars on a TTY, nothing extra otherwise (the logs tell it).

Callbacks are cheap and loop-safe: transfers call `advance(n)` per chunk from the
event loop, training calls it per epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from fedasync.aws.transfer import Advance  # one name for the transfers' progress callback

__all__ = ["Advance", "Progress"]


def _ignore(_: int) -> None:
    return None


class Progress:
    """`with Progress(enabled) as progress: with progress.bar("upload", n, bytes_=True) as adv:`."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._rich: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            self._rich = _rich_progress()
            self._rich.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    @contextmanager
    def bar(self, description: str, total: int | None, unit: str = "bytes") -> Iterator[Advance]:
        """A bar for one transfer (unit bytes) or one training run (unit epochs)."""
        if self._rich is None:
            yield _ignore
            return
        task_id = self._rich.add_task(description, total=total, unit=unit)

        def advance(n: int) -> None:
            self._rich.advance(task_id, n)

        try:
            yield advance
        finally:
            self._rich.remove_task(task_id)


def _rich_progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, TextColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class AmountColumn(ProgressColumn):  # bytes as sizes, anything else as a count
        def __init__(self) -> None:
            super().__init__()
            self._bytes = DownloadColumn()

        def render(self, task: Any) -> Any:
            unit = task.fields.get("unit", "bytes")
            if unit == "bytes":
                return self._bytes.render(task)
            return Text(f"{int(task.completed)}/{int(task.total or 0)} {unit}")

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        AmountColumn(),
        console=Console(stderr=True),
        transient=True,
    )


DISABLED = Progress(enabled=False)
