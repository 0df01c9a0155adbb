"""The module paths of orinflow 0.1's flat optimize/ (orinflow.optimize.ptq, .qat, .sensitivity, ...) kept
for one release: each imports as the module that now holds its code (docs/architecture.md lists them)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PACKAGE = "orinflow.optimize"
MOVED = {
    "graph": "common.graph", "report": "common.qdq_report", "probes": "common.probes",
    "sparsity_check": "common.sparse24", "masks": "common.masks",
    "ptq": "quantize.ptq", "ort_worker": "quantize.ort_worker", "cpu_layout": "quantize.cpu_layout",
    "scale_search": "quantize.scale_search", "groups": "quantize.groups", "sensitivity": "quantize.sensitivity",
    "route": "quantize.route", "qat": "quantize.qat",
    "sat": "sparsity.sat", "sparse_select": "sparsity.select",
    "allocation": "prune.allocation", "reconstruct": "prune.reconstruct",
    "losses": "train.losses", "distributed": "train.distributed",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `orinflow.optimize.<old name>` and hands back the new module itself (one module, two names)."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == PACKAGE and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}")
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import machinery set the old name's spec on it: keep the module's own


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
