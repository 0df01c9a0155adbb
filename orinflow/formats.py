"""One validator per output format a name from a model or its data can reach.

Tensor names, class names and file names come from files orinflow did not write. Each generated format has
characters that change its meaning (a newline starts a new key in nvinfer's config, `;` splits a list, `[`
starts a shape in benchmark_app's flag), so before a name is written into one, that format's validator here
refuses what the format cannot carry, naming the format and the name. Console text needs no validator:
the CLI's consoles print names literally (cli/app.py).
"""
from __future__ import annotations

from typing import Iterable

from .errors import OrinflowError


def _control(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _refuse(what: str, value: str, format_: str, why: str) -> None:
    raise OrinflowError(f"{what} {value!r} cannot be written into {format_}: {why}; rename it and run again")


def ini_value(value: str, what: str, format_: str = "DeepStream's config_infer_primary.txt") -> str:
    """A value of nvinfer's key file (GLib's key-file format): one line, no `;` (it splits lists), no `\\`
    (it starts an escape), no `#` (a comment in some readers) and no surrounding spaces (they are trimmed)."""
    value = str(value)
    if not value or _control(value) or any(c in value for c in ";\\#") or value != value.strip():
        _refuse(what, value, format_, "a value there must be one line without ';', '\\', '#' or surrounding "
                "spaces")
    return value


def ini_list(values: Iterable[str], what: str) -> str:
    """A `;`-separated list value of nvinfer's key file."""
    return ";".join(ini_value(value, what) for value in values)


def label(name: str, what: str = "class name") -> str:
    """One entry of DeepStream's labels.txt: one line, no `;` (nvinfer splits labels at it)."""
    name = str(name)
    if not name or _control(name) or ";" in name or name != name.strip():
        _refuse(what, name, "DeepStream's labels.txt", "a label there must be one line without ';' or surrounding "
                "spaces")
    return name


def class_names(names: dict, what: str = "the model's class names") -> list[str]:
    """Class names by id 0..n-1 for a labels file: the ids must be exactly those (no gap), each a valid label."""
    try:
        ids = sorted(int(key) for key in names)
    except (TypeError, ValueError):
        raise OrinflowError(f"{what} have ids that are not integers: {sorted(map(str, names))[:5]}") from None
    if ids != list(range(len(ids))):
        raise OrinflowError(f"{what} have ids {ids[:8]}{' ...' if len(ids) > 8 else ''}, not 0..{len(ids) - 1}: a "
                            "labels file gives the label of class i on line i, so every id must be there")
    by_id = {int(key): value for key, value in names.items()}
    return [label(by_id[i], f"class {i}'s name") for i in ids]


def cache_tensor(name: str) -> str:
    """A tensor name on a TensorRT calibration cache line (`name: <hex>`): one line."""
    if not name or _control(name) or name != name.strip():
        _refuse("tensor", name, "a TensorRT calibration cache", "a cache line holds one name on one line, without "
                "control characters or surrounding spaces")
    return name


def trtexec_input(name: str) -> str:
    """An input name in trtexec's shape flags (`name:BxCxHxW`, a list split at ',' and each at ':')."""
    if not name or any(c in name for c in ",:'\"") or any(c.isspace() or not c.isprintable() for c in name):
        _refuse("the model's input", name, "trtexec's shape flags", "',' ':' quotes and spaces split them (rename the "
                "input with onnx.compose or graph editing)")
    return name


def markdown_text(text: str) -> str:
    """Text inside a Markdown table cell or list item: one line (a newline would end the row) with `|` escaped
    (it would end the cell)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def benchmark_app_shape(names: list[str], shape: list[int]) -> str:
    """benchmark_app's `-shape` value for the first input: `[B,C,H,W]` alone when the model has one input (no name
    to misread), else `name[B,C,H,W]`, whose name may not hold '[', ']' or ','."""
    dims = f"[{','.join(str(d) for d in shape)}]"
    if len(names) == 1:
        return dims
    name = names[0]
    if not name or any(c in name for c in "[],") or any(c.isspace() or not c.isprintable() for c in name):
        _refuse("the model's input", name, "benchmark_app's -shape flag", "'[' ']' ',' and spaces split it")
    return f"{name}{dims}"
