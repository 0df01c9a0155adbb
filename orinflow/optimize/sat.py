"""Route 3, 2:4 structured sparsity with ModelOpt plus sparsity-aware fine-tuning (SAT).

The masks are computed once (magnitude, or SparseGPT on calibration images) and held
fixed while the model is fine-tuned with the same trainer as QAT (distillation from the
FP32 model, or labels for classifiers); the result is exported as an FP32 ONNX whose
eligible weights are 2:4 sparse, ready for route 1 (`orinflow ptq`), which keeps zeros zero.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from ..data import Dataset
from ..errors import OrinflowError
from ..export import export_onnx
from ..io import write_json
from ..models import ModelAdapter
from . import import_quietly
from .qat import QATConfig, _batches, train
from .sparsity_check import sparsity_summary

METHODS = {"magnitude": "sparse_magnitude", "sparsegpt": "sparsegpt"}


def sparsify_module(adapter: ModelAdapter, dataset: Dataset, method: str, config: QATConfig) -> torch.nn.Module:
    """A copy of the model with 2:4 masks on the layers ModelOpt (ASP rules) can sparsify."""
    if method not in METHODS:
        raise OrinflowError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    mts = import_quietly("modelopt.torch.sparsity")
    module = copy.deepcopy(adapter.export_module()).to(config.device).eval()
    options = {}
    if method == "sparsegpt":
        order = np.random.default_rng(config.seed).permutation(len(dataset))[:config.calib_images]
        loader = [images.to(config.device) for images, _ in _batches(dataset, adapter, order, config.batch)]
        options = {"config": {"data_loader": loader, "collect_func": lambda batch: batch}}
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return mts.sparsify(module, mode=METHODS[method], **options)


def run_sat(adapter: ModelAdapter, dataset: Dataset, method: str, config: QATConfig, output: Path,
            say=print) -> dict:
    if adapter.task == "detect" and not config.distill:
        raise OrinflowError("label losses for detectors are not built yet: run detector SAT with --distill")
    started = time.perf_counter()
    student = sparsify_module(adapter, dataset, method, config)
    say(f"2:4 masks computed ({method})")
    losses = train(adapter, student, adapter.export_module(), dataset, config, say) if config.epochs else []
    mts = import_quietly("modelopt.torch.sparsity")
    dense = mts.export(student).cpu().eval()  # masks baked into the weights
    sparse_adapter = ModelAdapter(adapter.family, adapter.source, dense, adapter.processing, adapter.extra)
    exported = export_onnx(sparse_adapter, output)
    report = sparsity_summary(onnx.load(str(output)))
    record = {"command": "sparsify", "route": "sat", "model": str(output), "source": adapter.source,
              "method": method, "config": asdict(config), "losses": losses, "parity": exported.record["parity"],
              "sparsity": report,
              "seconds": round(time.perf_counter() - started, 1)}
    write_json(output.with_suffix(".json"), record)
    return record
