"""Progress bars for long work (rich), quiet when ORINFLOW_QUIET is set or output is not a terminal."""
from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)
    if os.environ.get("ORINFLOW_QUIET"):
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
