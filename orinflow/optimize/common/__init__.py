"""What every optimization technique shares: the ONNX graph index (graph.py), the Q/DQ placement report
(qdq_report.py), head-output probes and SQNR (probes.py), layer FLOPs and weight views (layers.py), the traced
output and frozen layers (tracing.py), the 2:4 check (sparse24.py) and held masks (masks.py), and quiet imports
of noisy libraries (here). Nothing here imports a technique."""
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
