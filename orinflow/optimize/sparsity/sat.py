"""Routes 3 and 4: 2:4 structured sparsity plus sparsity-aware fine-tuning (SAT), then QAT.

The masks are computed once and held fixed while the model is fine-tuned: ModelOpt's magnitude
masks on every eligible layer, or (select.py) our SparseGPT and/or a choice of layers by
the accuracy they cost per FLOP (`--sparse-flops`). Fine-tuning uses the same trainer as QAT
(distillation from the FP32 model and/or the family's label loss); the result is exported as an
FP32 ONNX whose sparse weights are 2:4, ready for route 1 (`orinflow ptq`), which keeps zeros zero.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ...data import Dataset
from ...errors import OrinflowError
from ...export import export_onnx
from ...io import write_record
from ...models import ModelAdapter, save_checkpoint
from ..common import import_quietly, quietly
from ..common.masks import hold_masks, sparse_masks
from ..common.sparse24 import sparsity_summary
from ..quantize.qat import run_qat
from ..train import distributed
from ..train.config import QATConfig
from ..train.loop import batches, check_trainable, checkpoint_path, train

MODELOPT_STATE = "_modelopt_state"  # where ModelOpt records the modes applied to a model
METHODS = ("magnitude", "sparsegpt")  # sparsegpt is our own (select.py): ModelOpt's is not 2:4 along channels
SENSITIVITY_IMAGES = 16  # calibration images whose head outputs rank the layers for --sparse-flops


def check_method(method: str, sparse_flops: float | None = None) -> None:
    if method not in METHODS:
        raise OrinflowError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if sparse_flops is not None and not 0 < sparse_flops <= 1:
        raise OrinflowError(f"--sparse-flops is a share of the conv FLOPs in (0, 1], got {sparse_flops}")


def sparsify_module(adapter: ModelAdapter, config: QATConfig) -> torch.nn.Module:
    """A copy of the model with ModelOpt's magnitude 2:4 masks on every layer its ASP rules allow."""
    mts = import_quietly("modelopt.torch.sparsity")
    module = copy.deepcopy(adapter.export_module()).to(config.device).eval()
    with quietly():
        return mts.sparsify(module, mode="sparse_magnitude")


def selected_module(adapter: ModelAdapter, dataset: Dataset, method: str, config: QATConfig,
                    sparse_flops: float | None, say=print) -> tuple[torch.nn.Module, dict, dict]:
    """A copy of the model whose chosen layers are 2:4 (select.py), their masks, and the choice."""
    from .select import select_24

    module = copy.deepcopy(adapter.export_module()).eval()
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:config.calib_images]
    calib = [images for images, *_ in batches(dataset, adapter, order, config.batch)]
    probe = torch.cat(calib)[:SENSITIVITY_IMAGES]
    masks, selection = select_24(module, method, sparse_flops, calib, probe, say)
    return module.to(config.device), masks, selection


def sat_stage(adapter: ModelAdapter, dataset: Dataset, method: str, config: QATConfig, checkpoint: Path,
              say=print, sparse_flops: float | None = None) -> tuple[torch.nn.Module, list[float], dict | None]:
    """2:4 masks, then fine-tuning with the masks fixed; returns the plain module with the zeros baked in, the
    losses and the layer choice (None when ModelOpt's magnitude masks went on every eligible layer)."""
    check_method(method, sparse_flops)
    check_trainable(adapter, config)
    teacher = adapter.export_module()
    if method == "magnitude" and sparse_flops is None:
        student = sparsify_module(adapter, config)
        say(f"2:4 masks computed ({method})")
        losses = train(adapter, student, teacher, dataset, config, say, checkpoint) if config.epochs else []
        mts = import_quietly("modelopt.torch.sparsity")
        plain = mts.export(student).cpu().eval()  # masks multiplied into the weights
        if hasattr(plain, MODELOPT_STATE):  # a plain module again, so route 4 can quantize it afresh
            delattr(plain, MODELOPT_STATE)
        return plain.module, losses, None  # unwrapped from export_module()'s RawOutput
    student, masks, selection = selected_module(adapter, dataset, method, config, sparse_flops, say)
    losses = (train(adapter, student, teacher, dataset, config, say, checkpoint, hold_masks(student, masks))
              if config.epochs else [])
    return student.cpu().eval().module, losses, selection


def run_sat(adapter: ModelAdapter, dataset: Dataset, method: str, config: QATConfig, output: Path,
            say=print, sparse_checkpoint: Path | None = None, sparse_flops: float | None = None) -> dict:
    """Route 3: a 2:4-sparse FP32 ONNX (route 1 then quantizes it) and, with `sparse_checkpoint`, the sparse model
    as an ordinary checkpoint of its family (BatchNorm folded) for `export` at other sizes or further routes."""
    started = time.perf_counter()
    sparse, losses, selection = sat_stage(adapter, dataset, method, config, checkpoint_path(output, "sat"), say,
                                          sparse_flops)
    if not distributed.is_main():
        return {"rank": distributed.rank(), "losses": losses}  # rank 0 exports and records
    exported = export_onnx(_with_module(adapter, sparse), output)
    if sparse_checkpoint is not None:
        save_checkpoint(adapter, sparse, sparse_checkpoint, {"route": "sat", "method": method, "source": adapter.source})
        say(f"sparse checkpoint {sparse_checkpoint}")
    record = {"command": "sparsify", "route": "sat", "model": str(output), "source": adapter.source,
              "method": method, "config": asdict(config), "losses": losses, "parity": exported.record["parity"],
              "checkpoint": None if sparse_checkpoint is None else str(sparse_checkpoint),
              "sparsity": sparsity_summary(onnx.load(str(output))), "selection": selection,
              "seconds": round(time.perf_counter() - started, 1)}
    write_record(output, record)
    return record


def run_sparse_qat(adapter: ModelAdapter, dataset: Dataset, method: str, sat_config: QATConfig,
                   qat_config: QATConfig, output: Path, say=print, sparse_flops: float | None = None,
                   init_from: Path | None = None, allow_partial: bool = False,
                   selection: Dataset | None = None) -> dict:
    """Route 4: SAT, then QAT of the sparse model with its 2:4 masks re-applied after every step.

    QAT starts from `init_from` (its scales, float groups and placement; the weights stay SAT's) or, without it,
    from route 1 on the sparse model, written as `<output>_start_int8.onnx` (run_qat, make_start).
    The dense FP32 model stays the teacher in both stages. The export is Q/DQ ONNX whose
    quantized weights are still 2:4 (symmetric quantization maps zero to zero).
    """
    started = time.perf_counter()
    sparse, sat_losses, chosen = sat_stage(adapter, dataset, method, sat_config, checkpoint_path(output, "sat"),
                                           say, sparse_flops)
    if qat_config.resume and not checkpoint_path(output, "qat").exists():  # interrupted during SAT
        qat_config = replace(qat_config, resume=False)
    sparse_adapter = _with_module(adapter, sparse)
    masks = sparse_masks(sparse_adapter.export_module())  # named as in the copy that QAT trains
    say(f"SAT done; holding the 2:4 masks of {len(masks)} layers through QAT")
    record = run_qat(sparse_adapter, dataset, qat_config, output, init_from, say, teacher=adapter.export_module(),
                     masks=masks, selection=selection, allow_partial=allow_partial, load_weights=init_from is None)
    if not distributed.is_main():
        return record
    record.update({"command": "sparse-qat", "route": "sparse-qat", "source": adapter.source, "method": method,
                   "sat_config": asdict(sat_config), "sat_losses": sat_losses, "sparse_selection": chosen,
                   "sparsity": sparsity_summary(onnx.load(str(output))),
                   "seconds": round(time.perf_counter() - started, 1)})
    write_record(output, record)
    return record


def _with_module(adapter: ModelAdapter, module: torch.nn.Module) -> ModelAdapter:
    return ModelAdapter(adapter.family, adapter.source, module, adapter.processing, adapter.extra)
