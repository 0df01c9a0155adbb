"""Packages that name their public functions without importing them: each is read from its module on
first use, so importing a package (or running one of its modules as a worker) stays light."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, where `names` maps each public name to its module."""
    def getattr_(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return getattr_, dir_
