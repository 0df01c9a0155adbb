"""`--modules file.py`: a fork's or a user's own module classes, for checkpoints that pickle them.

A checkpoint pickles each class by the module path it was defined under (a fork of Ultralytics
defines `ultralytics.nn.modules.block.MyBlock`; a user's code `mypkg.blocks.MyBlock`). orinflow
imports the given files, then makes each class the checkpoint names resolvable under that path:
it sets the class on the importable module, or registers an empty module of that name. Every
class the checkpoint names is checked before unpickling, so a missing one is one clear line
(and Ultralytics never tries to install a package for it).
"""
from __future__ import annotations

import _compat_pickle
import importlib
import inspect
import sys
import types
import warnings
from pathlib import Path

from ..errors import OrinflowError

HANDLED_BY_ADAPTERS = ("models.", "utils.")  # the YOLOv5 adapter maps the yolov5 repository's own paths


def import_modules(files: list[str | Path]) -> dict[str, type]:
    """Import each file (or package.module) and return the classes it defines, by name."""
    from .classifier import import_target

    classes: dict[str, type] = {}
    for entry in files or []:
        module = import_target(str(entry))
        classes.update({name: obj for name, obj in vars(module).items()
                        if inspect.isclass(obj) and obj.__module__ == module.__name__})
    return classes


def resolve_classes(path: Path, classes: set[tuple[str, str]], provided: dict[str, type],
                    skip: tuple[str, ...] = ()) -> None:
    """Make every class that `path` pickles (`classes`, from `pickle_classes`) resolvable, from the installed
    code or from `provided`."""
    for module_name, name in sorted(classes, key=str):
        if module_name is None or name is None or module_name.startswith(skip):
            continue
        module_name, name = _python3_name(module_name, name)
        module = _importable(module_name)
        if module is not None and hasattr(module, name.split(".")[0]):
            continue
        if name not in provided:
            raise OrinflowError(f"{path} uses {module_name}.{name}, which is not importable here; give the file "
                                "that defines it with --modules file.py")
        setattr(module if module is not None else _register(module_name), name, provided[name])


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """What Python 3's unpickler reads a protocol-2 name as (`__builtin__.set` is `builtins.set`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _importable(name: str):
    try:
        with warnings.catch_warnings():  # old checkpoints name deprecated paths such as numpy.core
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - a module that fails on import is the user's to fix
        raise OrinflowError(f"importing {name} (named by the checkpoint) failed: {type(e).__name__}: {e}") from e


def _register(name: str) -> types.ModuleType:
    """An empty module `name` (and its parents) in sys.modules, for the unpickler to find classes on."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix not in sys.modules and _importable(prefix) is None:
            sys.modules[prefix] = types.ModuleType(prefix)
    return sys.modules[name]
