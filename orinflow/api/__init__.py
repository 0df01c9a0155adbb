"""The Python API: `import orinflow`, then one function per command, with the CLI's names and defaults.

Every function returns the run record that the command writes (a dict), checks its inputs and
outputs before any work, and raises `orinflow.errors.OrinflowError` with one clear line for bad
input. `say` receives progress lines (the CLI passes its console; the default prints).
docs/python.md shows a worked example; the CLI (orinflow/cli/) is a thin layer over these functions.

By command family: prepare.py (load, adopt, export, calibrate), quantization.py (quantize, ptq,
sensitivity, calib_cache, inspect), inspection.py (evaluate, evaluate_many, named_models, compare, deploy, report),
training.py (qat, sparsify, sparse_qat, prune); common.py holds what they share.
"""
from .common import PathLike, Say, locate, names_list
from .inspection import compare, deploy, evaluate, evaluate_many, named_models, report
from .prepare import adopt, calibrate, export, load, standard_detector_processing
from .quantization import budget_inputs, calib_cache, inspect, ptq, quantize, quantize_spec, sensitivity
from .training import prune, qat, sparse_qat, sparsify

__all__ = ["load", "adopt", "export", "calibrate", "quantize", "ptq", "sensitivity", "evaluate", "evaluate_many",
           "named_models", "compare", "qat", "sparsify", "sparse_qat", "prune", "inspect", "deploy", "report",
           "calib_cache", "locate", "names_list", "standard_detector_processing", "quantize_spec", "budget_inputs", "PathLike", "Say"]
