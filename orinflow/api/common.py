"""What every API function shares: a bare name found in the workspace, --mean/--std triples, name lists."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from ..config import workspace
from ..errors import OrinflowError


PathLike = str | Path

Say = Callable[[str], object]


# Folders of the workspace that hold copies (deploy bundles) or caches, never a file to pick up by name.
LOOKUP_SKIPPED = ("deploy", "cache")


def locate(path: PathLike | None, say: Say = print) -> PathLike | None:
    """The file a bare name means (docs/workspace.md): `path` itself when it exists or names a folder; otherwise a
    file of that name in the workspace, where orinflow writes by default (`--calib coco128.npy`), or for NAME.onnx
    the export NAME_<imgsz>.onnx (`-m yolo26n.onnx`). One match is used and named through `say`; several are an
    error that lists them; otherwise `path` comes back as given (a missing file is then reported as missing)."""
    if not path:
        return path  # no model (an --arch factory alone)
    given = Path(path)
    root = workspace()
    if given.exists() or given.parent != Path(".") or not given.suffix or not root.is_dir():
        return path
    files = [p for p in root.rglob("*") if p.is_file()
             and not set(LOOKUP_SKIPPED) & set(p.relative_to(root).parts[:-1])]
    found = [p for p in files if p.name == given.name]
    if not found and given.suffix.lower() == ".onnx":
        export_name = re.compile(re.escape(given.stem) + r"_\d+\.onnx")
        found = [p for p in files if export_name.fullmatch(p.name)]
    if len(found) > 1:
        raise OrinflowError(f"{given} is not in the current folder and {len(found)} files in {root} match it "
                            f"({', '.join(map(str, sorted(found)[:4]))}{', ...' if len(found) > 4 else ''}): "
                            "give the path")
    if not found:
        return path
    say(f"{given}: not in the current folder; using {found[0]} from the workspace")
    return found[0]


def triple(value: str | float | Sequence[float] | None, flag: str) -> tuple[float, float, float] | None:
    """'r,g,b' (the CLI's form; each may be a fraction such as 1/255), one value for all three, or three numbers."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else
                                                              [value])
    try:
        values = tuple(number(v) for v in items)
    except (TypeError, ValueError, ZeroDivisionError):
        raise OrinflowError(f"{flag} must be three comma-separated numbers (or one), got {value!r}") from None
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        raise OrinflowError(f"{flag} must be three comma-separated numbers (or one), got {value!r}")
    if flag == "--std" and min(values) <= 0:
        raise OrinflowError(f"--std must be positive, got {value!r}")
    return values


def number(text) -> float:
    if isinstance(text, str) and "/" in text:
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


def names_list(value: str | Sequence[str] | None) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'] (how the CLI's lists are written)."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]
