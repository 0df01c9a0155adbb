"""Route 2, quantization-aware training with NVIDIA ModelOpt, exported as Q/DQ ONNX.

Fake quantizers go on every Conv/Linear (per-channel weights, per-tensor activations),
calibrated on real images, then the model is fine-tuned with the quantizers in the loop.
The decode of a detector head is plain tensor arithmetic, not a module, so it stays in
high precision by construction; the DFL projection conv is excluded by name pattern.

The fine-tuning is the shared training loop (optimize/train/): distillation from the FP32 model
and/or the family's own label loss.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from ...data import Dataset, read_image
from ...errors import OrinflowError
from ...io import atomic_path, check_output, write_record
from ...models import ModelAdapter
from ...models.onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, write_metadata
from ...runtime import OrtRunner
from ..common import import_quietly, quietly
from ..common.graph import decode_nodes
from ..common.masks import hold_masks
from ..common.qdq_report import qdq_report
from ..train import distributed
from ..train.loop import QATConfig, batches, check_trainable, checkpoint_path, train


DFL_PATTERN = "*dfl*"


def _quant_config():
    mtq = import_quietly("modelopt.torch.quantization")

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    # The DFL projection is decode, not learned compute: keep it in high precision.
    config["quant_cfg"].append({"quantizer_name": DFL_PATTERN, "enable": False})
    return config


def insert_quantizers(adapter: ModelAdapter, dataset: Dataset, config: QATConfig) -> torch.nn.Module:
    """A copy of the model with calibrated fake quantizers on its Conv/Linear layers (the adapter stays FP32)."""
    mtq = import_quietly("modelopt.torch.quantization")

    module = copy.deepcopy(adapter.export_module()).to(config.device).eval()
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:config.calib_images]

    def forward_loop(model):
        with torch.no_grad():
            for images, _, _ in batches(dataset, adapter, order, config.batch):
                model(images.to(config.device))

    with quietly():
        return mtq.quantize(module, _quant_config(), forward_loop)


def export_qdq(adapter: ModelAdapter, student: torch.nn.Module, probe: np.ndarray, output: Path,
               opset: int = 17) -> dict:
    """Export the fake-quantized model as Q/DQ ONNX with orinflow metadata; check it against PyTorch.

    The two differ a little by design: ModelOpt's fake quantizer clamps to [-127, 127] while
    ONNX QuantizeLinear (and TensorRT) use [-128, 127], so activations beyond the calibrated
    range round differently. The check therefore bounds the 99th percentile of the
    difference on a real image and records the maximum.
    """
    student = student.cpu().eval()
    dummy = torch.zeros(adapter.input_shape)
    with atomic_path(output) as tmp:
        with quietly(), torch.no_grad():
            torch.onnx.export(student, (dummy,), str(tmp), opset_version=opset, input_names=["images"],
                              output_names=["output0"], dynamo=False)
        model = onnx.load(str(tmp))
        write_metadata(model, {META_PROCESSING: adapter.processing.to_json(), META_FAMILY: adapter.family,
                               META_SOURCE: adapter.source, "orinflow.quantization": '{"route": "qat"}'})
        onnx.save(model, str(tmp))
        with torch.no_grad():
            reference = student(torch.from_numpy(probe)).numpy()
        diff = np.abs(OrtRunner(tmp).run(probe)[0] - reference)
        scale = float(np.abs(reference).max()) or 1.0
        p99 = float(np.percentile(diff, 99))
        if not np.isfinite(diff).all() or p99 > 0.05 * max(1.0, scale):
            raise OrinflowError(f"QAT export is broken: 99th percentile |PyTorch - ONNX| = {p99:.3g} "
                                f"(outputs up to {scale:.3g})")
    return {"max_abs_diff": float(diff.max()), "p99_abs_diff": p99, "mean_abs_diff": float(diff.mean()),
            "output_max_abs": scale}


def run_qat(adapter: ModelAdapter, dataset: Dataset, config: QATConfig, output: Path, say=print,
            teacher: torch.nn.Module | None = None, masks: dict | None = None) -> dict:
    """Route 2 (and the QAT stage of route 4, which passes the dense teacher and the 2:4 masks to hold)."""
    check_output(output, (".onnx",), [adapter.source], command="qat")
    check_trainable(adapter, config, dataset)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    teacher = adapter.export_module() if teacher is None else teacher  # FP32; the student is a quantized copy
    student = insert_quantizers(adapter, dataset, config)
    say(f"fake quantizers inserted and calibrated on {min(config.calib_images, len(dataset))} images")
    after_step = hold_masks(student, masks) if masks else None
    losses = train(adapter, student, teacher, dataset, config, say, checkpoint_path(output, "qat"), after_step)
    if not distributed.is_main():
        return {"rank": distributed.rank(), "losses": losses}  # rank 0 exports and records
    probe = adapter.processing.preprocess(read_image(dataset.images[0]))[0][None]
    parity = export_qdq(adapter, student, probe, output)
    exported = onnx.load(str(output))
    decode = set(decode_nodes(exported)) if adapter.task == "detect" else set()
    record = {"command": "qat", "route": "qat", "model": str(output), "source": adapter.source,
              "config": asdict(config), "processes": distributed.world_size(), "losses": losses, "parity": parity,
              "qdq_report": qdq_report(exported, "tensorrt", "int8", decode),
              "seconds": round(time.perf_counter() - started, 1)}
    write_record(output, record)
    return record
