"""orinflow: vision models to fast, accurate INT8 ONNX for TensorRT on Jetson Orin.

The Python API (docs/python.md) is one function per command, with the CLI's names and defaults:
`orinflow.load`, `adopt`, `export`, `calibrate`, `quantize`, `ptq`, `sensitivity`, `evaluate`,
`evaluate_many`, `named_models`, `compare`,
`qat`, `sparsify`, `sparse_qat`, `prune`, `inspect`, `deploy`, `report`, `calib_cache`.
They live in orinflow/api/ and are imported on first use, so `import orinflow` stays light.
"""
import sys as _sys
import types as _types

from .version import VERSION as __version__  # noqa: E402
API = ("load", "adopt", "export", "calibrate", "quantize", "ptq", "sensitivity", "evaluate", "evaluate_many",
       "named_models", "compare", "qat", "sparsify", "sparse_qat", "prune", "inspect", "deploy", "report",
       "calib_cache")
__all__ = list(API)


class _Package(_types.ModuleType):
    """The package keeps its API functions when a subpackage of the same name is imported.

    `orinflow.export`, `orinflow.evaluate`, `orinflow.deploy` and `orinflow.report` are also
    subpackages (the layout of DESIGN.md). Importing one would normally set it as the package's
    attribute and hide the function; the subpackages stay importable by their full names.
    """

    def __setattr__(self, name, value):
        if name in API and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    if name == "OrinflowError":  # what every API function raises for bad input (orinflow.errors)
        from .errors import OrinflowError

        return OrinflowError
    raise AttributeError(f"module 'orinflow' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API, "OrinflowError"])


_sys.modules[__name__].__class__ = _Package
