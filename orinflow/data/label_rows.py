"""What every YOLO label row is checked for, whatever the task: numbers, all finite, a class id of the dataset."""
from __future__ import annotations

import math

from ..errors import OrinflowError


def row_values(line: str, where: str, names: dict[int, str]) -> list[float]:
    """The numbers of a non-blank row; `where` (file and line) starts the error that refuses it."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise OrinflowError(f"{where}: not numbers: {line.strip()[:60]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise OrinflowError(f"{where}: NaN or infinite value: {line.strip()[:60]!r}")
    cls = values[0]
    if cls != int(cls) or cls < 0 or (names and int(cls) not in names):
        known = f"0..{max(names)}" if names else "whole numbers >= 0"
        raise OrinflowError(f"{where}: class id {fields[0]} is not one of the dataset's classes ({known})")
    return values
