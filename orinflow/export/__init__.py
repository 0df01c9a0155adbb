"""PyTorch -> ONNX: export, simplify with onnxslim, stamp the processing spec, check parity."""
from __future__ import annotations

import io
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..config import DEFAULT_OPSET, raw_onnx_dir
from ..errors import OrinflowError
from ..io import atomic_path, check_output, write_record
from ..models import ModelAdapter
from ..models.onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, write_metadata
from ..models.processing import HEAD_ANCHOR_FREE
from ..runtime import OrtRunner, TorchRunner
from ..version import VERSION
from .nms import NmsSpec, attach_nms

# Parity limits relative to the output's magnitude: float32 reordering stays far below the
# fp32 limit; a wrong graph lands far above. FP16 weights round at about 1e-3 relative.
PARITY_RTOL = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass
class ExportResult:
    path: Path
    record: dict


def default_output(adapter: ModelAdapter, dynamic: bool, half: bool, nms: NmsSpec | None = None) -> Path:
    stem = Path(adapter.source).stem
    size = "x".join(map(str, adapter.processing.imgsz)) if len(set(adapter.processing.imgsz)) > 1 else str(adapter.processing.imgsz[0])
    suffix = "_dyn" if dynamic else ""
    suffix += "_fp16" if half else ""
    suffix += f"_nms{'' if nms.flavour == 'onnx' else '_trt'}" if nms else ""
    return raw_onnx_dir() / f"{stem}_{size}{suffix}.onnx"


MIN_OPSET = 13  # per-channel Q/DQ (what every INT8 route writes) and TensorRT's ONNX parser need 13 or newer


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter or the INT8 routes cannot use, before any work (torch prints its whole graph
    to stderr when an op has no form at an old opset)."""
    import torch.onnx._constants as limits

    newest = limits.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if not MIN_OPSET <= opset <= newest:
        raise OrinflowError(f"--opset {opset}: choose {MIN_OPSET} to {newest} (Q/DQ and TensorRT need {MIN_OPSET}+; "
                            f"torch's exporter writes up to {newest})")


def export_onnx(adapter: ModelAdapter, output: Path | None = None, opset: int = DEFAULT_OPSET, dynamic: bool = False,
                half: bool = False, simplify: bool = True, parity_image: np.ndarray | None = None,
                nms: NmsSpec | None = None) -> ExportResult:
    """Export `adapter` to ONNX at `output` (atomically) and verify it against PyTorch.

    `nms`: append decode and NMS (export/nms.py); parity is checked on the raw head output first, then the
    end-to-end detections against orinflow's own post-processing of that output (onnx flavour).
    """
    check_opset(opset)
    if nms is not None:
        nms.validate()
        if not adapter.processing.room.nms_in_engine:
            raise OrinflowError(f"--nms is for detectors: a {adapter.task} model keeps its NMS in post-processing")
    output = Path(output) if output else default_output(adapter, dynamic, half, nms)
    check_output(output, (".onnx",), [adapter.source], command="export")
    started = time.perf_counter()
    with atomic_path(output) as tmp:
        _torch_export(adapter, tmp, opset, dynamic)
        model = onnx.load(str(tmp))
        if simplify:
            model = _slim(model)
        if half:
            model = _to_fp16(model)
        write_metadata(model, {META_PROCESSING: adapter.processing.to_json(), META_FAMILY: adapter.family,
                               META_SOURCE: adapter.source, "orinflow.version": VERSION})
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        parity = check_parity(adapter, tmp, parity_image, "fp16" if half else "fp32")
        if nms is not None:
            model, _ = attach_nms(model, adapter.processing, nms)
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp))
            nms_check = check_end_to_end(adapter, tmp, nms, parity_image) if nms.flavour == "onnx" else None
    record = {
        "command": "export", "model": str(output), "source": adapter.source, "family": adapter.family,
        "task": adapter.task, "imgsz": list(adapter.processing.imgsz), "opset": opset, "dynamic_batch": dynamic,
        "half": half, "simplified": simplify, "parity": parity, "params": adapter.num_params(),
        "size_bytes": output.stat().st_size, "seconds": round(time.perf_counter() - started, 2),
    }
    if nms is not None:
        record["nms"] = {**asdict(nms), "check": nms_check}
    write_record(output, record)
    return ExportResult(output, record)


def _torch_export(adapter: ModelAdapter, path: Path, opset: int, dynamic: bool) -> None:
    module = adapter.export_module().eval()
    dummy = torch.zeros(adapter.input_shape)
    outputs = [f"output{i}" for i in range(adapter.processing.room.outputs)]
    axes = {name: {0: "batch"} for name in ("images", *outputs)} if dynamic else None
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (dummy,), str(path), opset_version=opset, input_names=["images"],
                              output_names=outputs, dynamic_axes=axes, dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise OrinflowError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with redirect_stdout(io.StringIO()):
        return onnxslim.slim(model)


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and arithmetic, float32 input/output so callers need not change."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        del model.graph.value_info[:]  # stale float32 shape annotations would contradict the new types
        return float16.convert_float_to_float16(model, keep_io_types=True)


def check_parity(adapter: ModelAdapter, onnx_path: Path, image: np.ndarray | None, precision: str) -> dict:
    """Max abs difference of the raw outputs, PyTorch vs ONNX Runtime, on one preprocessed image."""
    if image is None:
        image = _default_parity_image(adapter)
    batch = adapter.processing.preprocess(image)[0][None]
    references = TorchRunner(adapter).run(batch)
    candidates = OrtRunner(onnx_path).run(batch.astype(np.float32))
    if len(candidates) != len(references):
        raise OrinflowError(f"export is broken: the ONNX has {len(candidates)} outputs, PyTorch {len(references)}")
    found = [_output_parity(r, c.astype(np.float32), precision) for r, c in zip(references, candidates)]
    worst = max(found, key=lambda f: f["max_abs_diff"] / f["limit"])
    return {**found[0], "outputs": found} if len(found) > 1 else worst


def _output_parity(reference: np.ndarray, candidate: np.ndarray, precision: str) -> dict:
    """One output's max abs difference, refused above PARITY_RTOL of its scale."""
    if reference.shape != candidate.shape:
        raise OrinflowError(f"export is broken: ONNX output shape {candidate.shape} != PyTorch {reference.shape}")
    diff = float(np.abs(reference - candidate).max())
    scale = float(np.abs(reference).max()) or 1.0
    limit = PARITY_RTOL[precision] * max(1.0, scale)
    if not np.isfinite(diff) or diff > limit:
        raise OrinflowError(f"export is broken: max |PyTorch - ONNX| = {diff:.3g} exceeds {limit:.3g}")
    return {"max_abs_diff": diff, "output_max_abs": scale, "limit": limit, "output_shape": list(reference.shape)}


def check_end_to_end(adapter: ModelAdapter, onnx_path: Path, nms: NmsSpec, image: np.ndarray | None) -> dict:
    """The graph's detections against orinflow's post-processing of the PyTorch raw output, same thresholds.

    Equal when no pre-NMS top-k cut applies; with one, the difference is recorded, not refused.
    """
    from ..models.onnx_model import load_onnx

    image = _default_parity_image(adapter) if image is None else image
    x, meta = adapter.processing.preprocess(image)
    raw = TorchRunner(adapter).run(x[None])[0]
    mine = adapter.processing.postprocess(raw, [meta], conf=nms.conf, iou=nms.iou, max_det=nms.keep_topk)[0]
    graph = load_onnx(onnx_path).processing
    theirs = graph.postprocess(graph.head_output(OrtRunner(onnx_path).run(x[None].astype(np.float32))), [meta],
                               conf=nms.conf)[0]
    same = len(mine.scores) == len(theirs.scores) and (not len(mine.scores) or (
        np.abs(np.sort(mine.scores) - np.sort(theirs.scores)).max() < 1e-3))
    cut = nms.pre_topk < raw.shape[2 if adapter.processing.head == HEAD_ANCHOR_FREE else 1]
    if not same and not cut:
        raise OrinflowError(f"export is broken: the graph's NMS kept {len(theirs.scores)} detections where "
                            f"orinflow's post-processing keeps {len(mine.scores)}")
    return {"detections": len(theirs.scores), "postprocessed": len(mine.scores), "same": bool(same),
            "pre_topk_cut": bool(cut)}


def _default_parity_image(adapter: ModelAdapter) -> np.ndarray:
    """A real-looking image from the demo recipe when the user names none."""
    from ..demo.shapes import make_image

    image, _ = make_image(np.random.default_rng(0))
    return np.asarray(image)[:, :, ::-1].copy()

