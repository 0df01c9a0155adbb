"""Route 2, quantization-aware training with NVIDIA ModelOpt, from a Q/DQ start model.

The start is route 1's answer (the best PTQ model, --init-from, or made by `qat` itself with quantize's
method): ModelOpt's fake quantizers go on every Conv/Linear and take the start's scales, switched off where
the start keeps float (qat_start.py); the model is fine-tuned with them in the loop; its trained weights are
written back into the start graph, so the Q/DQ placement is the start's. The start and every epoch are scored
on selection data and the best is written (qat_select.py): QAT never ends below its start.

The fine-tuning is the shared training loop (optimize/train/): distillation from the FP32 model
and/or the family's own label loss.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from ...data import Dataset, read_image
from ...errors import OrinflowError
from ...io import check_output, write_record
from ...models import ModelAdapter, load_model
from ...models.onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, read_metadata
from ...runtime import OrtRunner
from ..common import import_quietly, quietly
from ..common.graph import decode_nodes
from ..common.masks import hold_masks
from ..common.qdq_report import qdq_report
from ..train import distributed
from .qat_select import BestEpoch
from .qat_start import Pairing, StartModel, apply_start, fold_batchnorms, pair_start, read_start
from ..train.loop import QATConfig, batches, check_trainable, checkpoint_path, train


DFL_PATTERN = "*dfl*"


def _quant_config():
    mtq = import_quietly("modelopt.torch.quantization")

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    # The DFL projection is decode, not learned compute: keep it in high precision.
    config["quant_cfg"].append({"quantizer_name": DFL_PATTERN, "enable": False})
    return config


def insert_quantizers(adapter: ModelAdapter, dataset: Dataset, config: QATConfig,
                      images: int | None = None) -> torch.nn.Module:
    """A copy of the model with fake quantizers on its Conv/Linear layers, calibrated on `images` images (default
    config.calib_images); the adapter stays FP32."""
    mtq = import_quietly("modelopt.torch.quantization")

    module = copy.deepcopy(adapter.export_module()).eval()
    fold_batchnorms(module, torch.zeros(adapter.input_shape))  # as the export folds them: the start's weights
    module = module.to(config.device)
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:images or config.calib_images]

    def forward_loop(model):
        with torch.no_grad():
            for images, *_ in batches(dataset, adapter, order, config.batch):
                model(images.to(config.device))

    with quietly():
        return mtq.quantize(module, _quant_config(), forward_loop)


def start_from(adapter: ModelAdapter, start: Path, student: torch.nn.Module, probe: np.ndarray,
               allow_partial: bool, load_weights: bool) -> tuple[StartModel, Pairing, dict]:
    """Give the student the start model's quantizers (and, with `load_weights`, its weights); refuse what does
    not pair unless `allow_partial`. Returns the start, the pairing and what the record says about them."""
    start_model = read_start(start)
    pairing = pair_start(start_model, student)
    problem = pairing.first_problem()
    if problem and not allow_partial:
        raise OrinflowError(f"--init-from {start} does not pair with {adapter.source}: {problem} (a model of "
                            "another architecture? --allow-partial calibrates what does not pair afresh)")
    if not pairing.pairs:
        raise OrinflowError(f"--init-from {start}: none of its layers pairs with {adapter.source}")
    apply_start(start_model, pairing, student, load_weights)
    fidelity = _agreement(student, start_model.path, probe)
    if load_weights and fidelity["p99_abs_diff"] > 0.05 * max(1.0, fidelity["output_max_abs"]):
        raise OrinflowError(f"--init-from {start}: the paired PyTorch model does not reproduce it (99th percentile "
                            f"|PyTorch - ONNX| = {fidelity['p99_abs_diff']:.3g}); was it exported from this model?")
    return start_model, pairing, {"model": str(start), "paired_layers": len(pairing.pairs),
                                  "float_layers": sum(layer.weight_amax is None for layer, _ in pairing.pairs),
                                  "calibrated_afresh": pairing.unpaired_modules,
                                  "kept_from_start": pairing.unpaired_layers, "fidelity": fidelity}


def _agreement(student: torch.nn.Module, onnx_path: Path, probe: np.ndarray) -> dict:
    """|PyTorch - ONNX| on a real image. They differ a little by design: the fake quantizers clamp to
    [-127, 127] where QuantizeLinear uses [-128, 127], and the start's quantizers on Add inputs are not
    emulated in PyTorch (docs/qat.md)."""
    device = next(student.parameters()).device
    with torch.no_grad():
        reference = student.eval()(torch.from_numpy(probe).to(device))
    reference = (reference[0] if isinstance(reference, (list, tuple)) else reference).cpu().numpy()
    diff = np.abs(OrtRunner(onnx_path).run(probe)[0] - reference)
    if not np.isfinite(diff).all():
        raise OrinflowError("QAT: the model's outputs are not finite")
    return {"max_abs_diff": float(diff.max()), "p99_abs_diff": float(np.percentile(diff, 99)),
            "mean_abs_diff": float(diff.mean()), "output_max_abs": float(np.abs(reference).max())}


def run_qat(adapter: ModelAdapter, dataset: Dataset, config: QATConfig, output: Path, start: Path | None = None,
            say=print, teacher: torch.nn.Module | None = None, masks: dict | None = None,
            selection: Dataset | None = None, allow_partial: bool = False, load_weights: bool = True,
            start_method: str | None = None) -> dict:
    """Route 2 from `start`, a Q/DQ model (route 1's answer): its placement, scales and float groups are kept
    (qat_start.py), the weights are fine-tuned, and the model written is the best of the start and every epoch
    on `selection` (the last epoch without it). Without `start`, route 1 runs first (make_start with
    `start_method`, default search where it is cheaper than an epoch), written as `<output>_start_int8.onnx`. The QAT stage of route 4 passes the dense teacher,
    the 2:4 masks to hold and load_weights=False (its weights come from SAT)."""
    check_output(output, (".onnx",), [adapter.source, start], command="qat")
    check_trainable(adapter, config, dataset)
    if start is None:
        start = check_output(output.with_name(output.stem + "_start_int8.onnx"), (".onnx",), [adapter.source],
                             command="quantize")
        distributed.on_main(lambda: make_start(adapter, dataset, config, start, start_method, say=say))
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    teacher = adapter.export_module() if teacher is None else teacher  # FP32; the student is a quantized copy
    # what pairs takes the start's scales: the calibration only matters, in full, for what does not
    student = insert_quantizers(adapter, dataset, config, None if allow_partial else config.batch)
    # the start's own input size and preprocessing (the training's may differ from a static export's)
    probe = load_model(start).processing.preprocess(read_image(dataset.images[0]))[0][None]
    start_model, pairing, start_record = start_from(adapter, start, student, probe, allow_partial, load_weights)
    say(f"QAT starts from {start}: {len(pairing.pairs)} layers paired, their scales and float groups kept"
        + (f"; {len(pairing.unpaired_modules)} calibrated afresh" if pairing.unpaired_modules else ""))
    metadata = _qat_metadata(adapter, start_model)
    chooser = BestEpoch(start_model, pairing, student, output, metadata, selection, adapter.task, say)
    after_step = hold_masks(student, masks) if masks else None
    try:
        chooser.consider(0)
        losses = train(adapter, student, teacher, dataset, config, say, checkpoint_path(output, "qat"), after_step,
                       after_epoch=chooser.consider)
        if not distributed.is_main():
            return {"rank": distributed.rank(), "losses": losses}  # rank 0 exports and records
        chosen = chooser.finish()
    finally:
        chooser.close()
    exported = onnx.load(str(output))
    decode = set(decode_nodes(exported)) if adapter.processing.room.protects_decode else set()
    record = {"command": "qat", "route": "qat", "model": str(output), "source": adapter.source,
              "config": asdict(config), "processes": distributed.world_size(), "losses": losses, "start": start_record,
              "selection": chosen, "parity": _agreement(student, output, probe) if chosen["epoch"] else
              start_record["fidelity"], "qdq_report": qdq_report(exported, "tensorrt", "int8", decode),
              "seconds": round(time.perf_counter() - started, 1)}
    write_record(output, record)
    return record


def _qat_metadata(adapter: ModelAdapter, start: StartModel) -> dict:
    previous = read_metadata(start.model).get("orinflow.quantization", "{}")
    return {META_PROCESSING: adapter.processing.to_json(), META_FAMILY: adapter.family, META_SOURCE: adapter.source,
            "orinflow.quantization": json.dumps({"route": "qat", "init_from": start.path.name,
                                                 "start": json.loads(previous or "{}")})}


# The search's cost in ONNX Runtime forward passes: about 5 trials per quantized layer, SEARCH_IMAGES each.
# A training image (PyTorch forward and backward through fake quantizers) costs about 10 of them on a CPU.
TRIALS_PER_LAYER, PASSES_PER_TRAINING_IMAGE = 5, 10


def default_start_method(fp32: onnx.ModelProto, dataset: Dataset, config: QATConfig) -> str:
    """search (route 1's best calibration) where it costs less than one epoch of the fine-tune, else entropy
    (quantize's default without a budget)."""
    from .scale_search import SEARCH_IMAGES

    layers = sum(node.op_type in ("Conv", "Gemm") for node in fp32.graph.node)
    epoch_images = len(dataset) if not config.max_steps else min(len(dataset), config.max_steps * config.batch)
    search_passes = TRIALS_PER_LAYER * layers * SEARCH_IMAGES
    return "search" if search_passes <= PASSES_PER_TRAINING_IMAGE * epoch_images * max(config.epochs, 1) else "entropy"


def make_start(adapter: ModelAdapter, dataset: Dataset, config: QATConfig, output: Path, method: str | None = None,
               budget: tuple | None = None, say=print) -> dict:
    """Route 1's answer for `adapter`, QAT's start when none is given: its FP32 ONNX (exported privately) quantized for TensorRT with `method` (default: default_start_method; under `budget`, auto) on config.calib_images
    images of `dataset`, under `budget` (BudgetSpec, selection Dataset, SensitivityOptions) when given.
    Returns quantize's record."""
    from ...data.calibration import build_calibration
    from ...export import export_onnx
    from ...io import private_folder
    from .calib_choice import budgeted
    from .ptq import AUTO, QuantizeSpec, quantize_onnx

    with private_folder("orinflow-qat-start-") as folder:
        fp32 = export_onnx(adapter, folder / f"{Path(adapter.source).stem}_fp32.onnx").path
        source = load_model(fp32)
        method = method or (AUTO if budget else default_start_method(onnx.load(str(fp32)), dataset, config))
        spec = QuantizeSpec(method=method)
        spec.validate()
        calib = build_calibration(source.processing, dataset, config.calib_images)
        say(f"route 1 first: {method} calibration on {len(calib)} images"
            + (f", under --max-drop {budget[0].max_drop}" if budget else "") + f" -> {output}")
        if budget:
            return budgeted(source, calib, spec, budget[1], budget[0], output, budget[2], say=say)
        return quantize_onnx(source, calib, spec, output, say=say)
