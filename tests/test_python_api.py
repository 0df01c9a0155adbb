"""The Python API: docs/python.md's example runs as written; the API and the CLI share names and defaults."""
import inspect
import re

import pytest

import orinflow
from conftest import ROOT


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "python.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/python.md", "exec"), {"__name__": "example"})
    work = tmp_path / "workspace" / "python-example"
    assert (work / "shapes_int8.onnx").is_file() and (work / "shapes_int8.json").is_file()
    printed = capsys.readouterr().out
    assert "TensorRT lint 0" in printed
    scores = [float(v) for v in re.findall(r"mAP50-95 ([0-9.]+)", printed)]
    assert len(scores) == 2 and all(0.5 < s <= 1 for s in scores)  # the demo detector scores ~0.98


@pytest.mark.parametrize("name, command", [("adopt", "adopt"), ("export", "export"), ("calibrate", "calibrate"),
                                           ("quantize", "quantize"), ("evaluate", "evaluate"),
                                           ("deploy", "deploy"), ("report", "report"), ("ptq", "ptq"),
                                           ("sensitivity", "sensitivity"), ("qat", "qat"), ("sparsify", "sparsify"),
                                           ("sparse_qat", "sparse_qat"), ("prune", "prune"), ("inspect", "inspect"),
                                           ("compare", "compare_command"), ("calib_cache", "calib_cache")])
def test_api_and_cli_share_names_and_defaults(name, command):
    from orinflow.cli import app

    commands = {info.callback.__name__: info.callback for info in app.registered_commands}  # as registered
    api_params = inspect.signature(getattr(orinflow, name)).parameters
    cli_params = inspect.signature(commands[command]).parameters
    renamed = {"json_out": "json"}
    for param in cli_params.values():
        key = renamed.get(param.name, param.name)
        if key in ("verbose", "compare", "more", "per_class", "layers", "model", "sources", "a", "b",
                   "compare_workspace"):  # display, positional, or the CLI's switch to named_models + evaluate_many
            continue
        assert key in api_params, f"{name}: the CLI's {param.name} is missing"
        assert api_params[key].default == param.default or api_params[key].default is inspect.Parameter.empty, \
            f"{name}: {key} defaults differ ({api_params[key].default!r} vs {param.default!r})"


def test_subpackages_stay_importable_beside_the_functions():
    import importlib

    assert callable(orinflow.export) and callable(orinflow.evaluate)
    assert hasattr(importlib.import_module("orinflow.export"), "export_onnx")
    assert hasattr(importlib.import_module("orinflow.evaluate"), "evaluate_model")
    assert callable(orinflow.export)  # still the function after the subpackage is imported


def _wrong_value(hint):
    """A value of the wrong type for an annotation, or None when the annotation takes anything."""
    import collections.abc
    import types
    import typing
    from pathlib import Path

    options = list(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    origins = [typing.get_origin(o) or o for o in options]
    if any(o in (list, tuple, collections.abc.Sequence) for o in origins) and str not in options:
        return "a/path.onnx"  # a single path where a list is meant (iterated character by character before)
    if collections.abc.Callable in origins:
        return 3
    if Path in options or str in options:
        return 3.5
    if int in options or float in options:
        return "5"
    if bool in options:
        return "yes"
    return None


def test_every_api_function_checks_its_arguments_at_the_door():
    """Each parameter of each API function, given a value of the wrong type, is one OrinflowError that names it,
    raised before any work (the other arguments are valid placeholders)."""
    import inspect
    import typing

    import orinflow
    from orinflow.errors import OrinflowError

    checked = 0
    for name in orinflow.API:
        func = getattr(orinflow, name)
        hints = typing.get_type_hints(func)
        required = {p.name: ["m.onnx"] if _wrong_value(hints[p.name]) == "a/path.onnx" else "m.onnx"
                    for p in inspect.signature(func).parameters.values() if p.default is inspect.Parameter.empty}
        for parameter, hint in hints.items():
            wrong = _wrong_value(hint)
            if parameter == "return" or wrong is None:
                continue
            with pytest.raises(OrinflowError, match=f"orinflow.{name}\\(\\): {parameter} must be"):
                func(**{**required, parameter: wrong})
            checked += 1
    assert checked >= 150
