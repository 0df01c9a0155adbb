"""Optimization routes: PTQ (ptq.py), QAT (qat.py), and what they share (graph.py, report.py)."""
from __future__ import annotations

import contextlib
import importlib
import io
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


@contextlib.contextmanager
def quietly():
    """ModelOpt, torch.onnx and ONNX Runtime log generously; keep the CLI's output to orinflow's own lines."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
