"""What every API function shares: its arguments checked at the door, a bare name found in the workspace,
--mean/--std triples, name lists."""
from __future__ import annotations

import collections.abc
import functools
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Callable, Sequence

from ..config import MAX_IMGSZ, workspace
from ..errors import OrinflowError


PathLike = str | Path
API_ONLY = {"say"}  # parameters no CLI flag stands for: their errors name the parameter, not a flag

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


# ---------------------------------------------------------------- arguments checked at the API's door
# The command-line flag of a parameter, where it is not --<name>
FLAGS = {"model": "-m", "data": "--yaml (the data)", "output": "-o"}
# Parameters whose range is the same wherever they appear (checked before any work, not after a long run)
RANGES = {"imgsz": (1, MAX_IMGSZ), "threads": (1, None), "batch": (1, None)}


def checked(func: Callable | None = None, *, before: Callable | None = None) -> Callable:
    """Check every argument of an API function against its annotation before any work: a wrong type is one
    OrinflowError naming the parameter, not a TypeError from deep inside (or a path string iterated character
    by character where a list of paths was meant). RANGES hold wherever the parameter appears. `before(**args)`
    runs first, for a mistake that deserves its own message."""
    if func is None:
        return functools.partial(checked, before=before)
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise OrinflowError(f"orinflow.{func.__name__}(): {e}") from None
        if before is not None:
            before(**bound.arguments)
        for name, value in bound.arguments.items():
            hint = hints.get(name)
            if value is None and hint is not None and not _fits(value, hint) and name not in API_ONLY:
                flag = FLAGS.get(name, f"--{name.replace('_', '-')}")
                raise OrinflowError(f"give {flag}: orinflow.{func.__name__}() needs {name}")
            if hint is not None and not _fits(value, hint):
                raise OrinflowError(f"orinflow.{func.__name__}(): {name} must be {_describe(hint)}, got "
                                    f"{type(value).__name__} {_short(value)}")
            low, high = RANGES.get(name, (None, None))
            if value is not None and low is not None and not low <= value <= (high or value):
                raise OrinflowError(f"--{name.replace('_', '-')} must be {low} or more"
                                    f"{f' (at most {high})' if high else ''}, got {value}")
        return func(*args, **kwargs)
    return wrapper


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits(value, hint) -> bool:
    origin, parameters = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in parameters)
    if hint is type(None):
        return value is None
    if origin is collections.abc.Callable or hint is Callable:
        return callable(value)
    if origin in (collections.abc.Sequence, list, tuple):
        if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
            return False
        item = parameters[0] if parameters else typing.Any
        return all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, os.PathLike))
    return True  # a type this check does not know is the function's to check


def _describe(hint) -> str:
    origin, parameters = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_describe(p) for p in parameters if p is not type(None)]
        options = [o for o in options if not (o == "a str" and "a path" in options)]
        text = " or ".join(dict.fromkeys(options))
        return text + (" or None" if type(None) in parameters else "")
    if origin in (collections.abc.Sequence, list, tuple):
        item = _describe(parameters[0]) if parameters else "a value"
        return "a list of paths" if item == "a path" else f"a list (each {item})"
    if origin is collections.abc.Callable or hint is Callable:
        return "a function"
    return {str: "a str", int: "an int", float: "a number", bool: "True or False", Path: "a path",
            dict: "a dict"}.get(hint, getattr(hint, "__name__", str(hint)))
