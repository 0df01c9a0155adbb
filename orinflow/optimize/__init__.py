"""Optimization routes: PTQ (ptq.py), QAT (qat.py), and what they share (graph.py, report.py)."""
from __future__ import annotations

import logging


def quiet_torch_extension_logs() -> None:
    """ModelOpt imports torch's C++-extension helper, which logs a CUDA warning on CPU-only machines."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
