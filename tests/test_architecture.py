"""The layout of orinflow/ (docs/architecture.md): no import circles, no borrowed private names, no lower floor
reaching up to the API or the CLI, no source file over 500 lines, and the 0.1 module paths still importing."""
import ast
import importlib
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "orinflow"
MAX_LINES = 500
FRONT_DOORS = ("orinflow.api", "orinflow.cli")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Every module's imports of modules of the package (at any depth of the file, lazy ones included), and
    each `from module import _name` of a private name defined in another module of the package."""
    root = package.parent
    modules = {module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:  # a submodule
                        graph[name].add(f"{target}.{alias.name}")
                    elif target in modules:
                        graph[name].add(target)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{name}: from {target} import {alias.name}")
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def orinflow_imports():
    return imports(PACKAGE)


def test_no_import_circles(orinflow_imports):
    assert cycles(orinflow_imports[0]) == []


def test_no_module_imports_another_modules_private_names(orinflow_imports):
    assert orinflow_imports[1] == []


def test_lower_floors_never_import_the_api_or_the_cli(orinflow_imports):
    graph = orinflow_imports[0]
    allowed = ("orinflow", "orinflow.entry", "orinflow.demo", *FRONT_DOORS)  # the demo runs the API like a user
    reaching_up = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                         if target.startswith(FRONT_DOORS) and not name.startswith(allowed))
    assert reaching_up == []


def test_the_checks_find_what_they_are_meant_to(tmp_path):
    """A package with a circle through a lazy import and a borrowed private name: both are reported."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import helper\n\ndef _own():\n    pass\n")
    (package / "sub" / "b.py").write_text("def helper():\n    from ..a import _own\n    return _own\n")
    graph, private = imports(package)
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert private == ["pkg.sub.b: from pkg.a import _own"]


def test_every_temporary_path_comes_from_io_so_an_interrupt_removes_it():
    """An interrupt removes only what orinflow/io.py registered: a `tempfile` call elsewhere would leave its
    folder behind on Ctrl-C (a deploy's staging bundle and prune's ONNX pair once did)."""
    users = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                   if p.name != "io.py" and any(isinstance(node, (ast.Import, ast.ImportFrom)) and
                                                "tempfile" in {a.name for a in node.names} | {getattr(node, "module", None)}
                                                for node in ast.walk(ast.parse(p.read_text()))))
    assert users == []


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("old, new", [
    ("orinflow.optimize.ptq", "orinflow.optimize.quantize.ptq"),
    ("orinflow.optimize.qat", "orinflow.optimize.quantize.qat"),
    ("orinflow.optimize.sensitivity", "orinflow.optimize.quantize.sensitivity"),
    ("orinflow.optimize.route", "orinflow.optimize.quantize.route"),
    ("orinflow.optimize.sparsity_check", "orinflow.optimize.common.sparse24"),
    ("orinflow.optimize.sat", "orinflow.optimize.sparsity.sat"),
])
def test_the_0_1_module_paths_import_as_the_modules_that_now_hold_the_code(old, new):
    moved = importlib.import_module(old)
    assert moved is importlib.import_module(new) and moved.__spec__.name == new


def test_the_0_1_names_the_docs_used_still_import():
    from orinflow.optimize.ptq import QuantizeSpec, quantize_onnx
    from orinflow.optimize.qat import QATConfig, run_qat
    from orinflow.optimize.quantize import QuantizeSpec as again
    from orinflow.optimize.sensitivity import BudgetSpec, SensitivityOptions

    assert QuantizeSpec is again and all(callable(f) for f in (quantize_onnx, run_qat, QATConfig, BudgetSpec,
                                                               SensitivityOptions))
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("orinflow.optimize.no_such_module")


def defined_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level (what `from module import name` can read)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(t.id for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, ast.If):  # names defined under an `if` at the top level
            names.update(n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    return names


def test_every_import_of_an_orinflow_module_names_what_it_defines():
    """Lazy imports inside functions run only when that path runs: a name that moved is found here first."""
    modules = {module_name(p, ROOT): p for p in PACKAGE.rglob("*.py")}
    lazy_exports = {name: set(ast.literal_eval(node.value)) for name, path in modules.items()
                    for node in ast.parse(path.read_text()).body
                    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PUBLIC" for t in node.targets)}
    missing = []
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = ".".join((here[:len(here) - node.level + 1] if node.level else []) + ([node.module] if node.module
                                                                                            else []))
            if target not in modules:
                continue
            known = defined_names(modules[target]) | lazy_exports.get(target, set())
            missing += [f"{name}: {target}.{a.name}" for a in node.names
                        if a.name not in known and f"{target}.{a.name}" not in modules]
    assert missing == []
