"""Optimization routes: PTQ (ptq.py), QAT (qat.py), and what they share (graph.py, report.py)."""
from __future__ import annotations

import importlib
import logging
import warnings


def import_quietly(module: str):
    """Import a ModelOpt module without its import-time noise.

    ModelOpt imports torch's C++-extension helper (a CUDA warning on CPU-only machines) and
    scripts a few functions with the deprecated torch.jit.script (a FutureWarning).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)
