"""A detector's classes against the data's: scored only when they agree, or when `--class-map` says how they pair.

Without this check a 3-class model scored on 80-class data, and its per-class table printed the data's
names under the model's classes. Class names that are plain numbers (a model or data without names)
are compared by count only.
"""
from __future__ import annotations

import re

from ..errors import OrinflowError

CLASS_MAP_HELP = ("--class-map pairs the model's classes with the data's: 'names' pairs equal names, or give "
                  "model:data id pairs such as 0:2,1:5 (other model classes are not scored)")


def _numbered(names: dict[int, str]) -> bool:
    return all(str(name).strip() == str(index) for index, name in names.items())


def _key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def _listed(names: dict[int, str], shown: int = 4) -> str:
    values = [str(names[k]) for k in sorted(names)]
    return ", ".join(values[:shown]) + (" ..." if len(values) > shown else "")


def class_mapping(model_names: dict[int, str], data_names: dict[int, str], class_map: str | None,
                  data: str = "the data") -> dict[int, int] | None:
    """model class -> data class; None when they are the same classes. Refuses a count or name mismatch
    that `class_map` does not resolve."""
    if class_map is not None:
        return _parse(class_map, model_names, data_names)
    if not model_names or not data_names:
        return None
    if len(model_names) != len(data_names):
        raise OrinflowError(f"the model has {len(model_names)} classes ({_listed(model_names)}) but {data} has "
                            f"{len(data_names)} ({_listed(data_names)}): {CLASS_MAP_HELP}")
    if not _numbered(model_names) and not _numbered(data_names):
        differ = [k for k in sorted(data_names) if _key(model_names.get(k, "")) != _key(data_names[k])]
        if differ:
            k = differ[0]
            raise OrinflowError(f"class {k} is {model_names.get(k)!r} in the model but {data_names[k]!r} in {data} "
                                f"({len(differ)} of {len(data_names)} classes differ): {CLASS_MAP_HELP}")
    return None


def _parse(class_map: str, model_names: dict[int, str], data_names: dict[int, str]) -> dict[int, int]:
    if class_map.strip().lower() == "names":
        by_name = {_key(name): k for k, name in data_names.items()}
        mapping = {k: by_name[_key(name)] for k, name in model_names.items() if _key(name) in by_name}
        if not mapping:
            raise OrinflowError(f"--class-map names: no class name of the model ({_listed(model_names)}) is a class "
                                f"of the data ({_listed(data_names)})")
        return mapping
    mapping = {}
    for pair in class_map.split(","):
        model_id, sep, data_id = pair.strip().partition(":")
        if not sep or not re.fullmatch(r"[0-9]+", model_id.strip()) or not re.fullmatch(r"[0-9]+", data_id.strip()):
            raise OrinflowError(f"--class-map {class_map!r}: '{pair.strip()}' is not model:data ids ({CLASS_MAP_HELP})")
        model_id, data_id = int(model_id), int(data_id)
        for what, index, names in (("model", model_id, model_names), ("data", data_id, data_names)):
            if names and index not in names:
                raise OrinflowError(f"--class-map {class_map!r}: the {what} has no class {index} "
                                    f"(it has {len(names)})")
        if model_id in mapping:
            raise OrinflowError(f"--class-map {class_map!r}: model class {model_id} is paired twice")
        mapping[model_id] = data_id
    return mapping

