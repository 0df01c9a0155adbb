"""Progress bars for long work (rich), quiet when ORINFLOW_QUIET is set or output is not a terminal."""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, TypeVar

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")


def _quiet() -> bool:
    """No bars for logs and pipes: rich would leave a blank line there for every finished bar."""
    from rich.console import Console

    console = Console()
    return bool(os.environ.get("ORINFLOW_QUIET")) or not (console.is_terminal or console.is_jupyter)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)
    if _quiet():
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with elapsed time for work that reports no steps (e.g. a library call)."""
    if _quiet():
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        bar.add_task(message, total=None)
        yield
