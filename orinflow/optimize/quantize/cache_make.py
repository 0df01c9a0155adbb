"""`orinflow calib-cache`: measure (or read) the scales, measure the cache itself, write cache and record together."""
from __future__ import annotations

from pathlib import Path

import onnx

from ...errors import OrinflowError
from ...io import atomic_path, record_path, write_json
from .calib_cache import activation_tensors, cache_text, decode_outputs, is_quantized, measured_scales, qdq_scales


def make_cache(model: Path | None, calib: Path | None, data, split: str, num_images: int, method: str,
               percentile: float, head_protect: bool, from_qdq: Path | None, output: Path, say=print) -> dict:
    """The cache at `output` and its record beside it (both or neither), returned as the record."""
    fp32, graph = _fp32(model) if model is not None else (None, None)
    array, dataset = None, None
    if from_qdq is not None:
        scales = qdq_scales(_qdq_model(from_qdq), str(from_qdq))
    else:
        from ...data import load_dataset
        from ...data.calibration import build_calibration, load_calibration

        dataset = load_dataset(data, split) if data else None
        array = (load_calibration(Path(calib), fp32.processing) if calib is not None
                 else build_calibration(fp32.processing, dataset, num_images))
        say(f"measuring {method} ranges of every activation of {Path(model).name} on {len(array)} images")
        scales = measured_scales(fp32.path, array, method, percentile)
    protected = _protected(fp32, graph, head_protect and from_qdq is None)
    scales = {t: v for t, v in scales.items() if t not in protected}
    text = cache_text(scales)  # every name checked for the cache's line format before anything is written
    wanted = [t for t in activation_tensors(graph) if t not in protected] if graph is not None else list(scales)
    record = {"command": "calib-cache", "output": str(output), "model": str(model) if model else None,
              "from_qdq": str(from_qdq) if from_qdq else None, "method": method, "tensors": len(scales),
              "head_protected": len(protected), "activations": len(wanted),
              "coverage": sum(t in scales for t in wanted) / max(len(wanted), 1),
              "missing": [t for t in wanted if t not in scales][:50],
              "scale_range": [min(scales.values()), max(scales.values())]}
    record["emulated"] = _measured(fp32, scales, array, dataset, say)
    with atomic_path(output) as cache_tmp, atomic_path(record_path(output)) as record_tmp:
        Path(cache_tmp).write_text(text)
        write_json(record_tmp, record)
    return record


def _fp32(model: Path):
    from ...models import OnnxModel, load_model

    fp32 = load_model(model)
    if not isinstance(fp32, OnnxModel):
        raise OrinflowError(f"{model} is not ONNX: export it first (`orinflow export`)")
    graph = onnx.load(str(fp32.path))
    if is_quantized(graph):
        raise OrinflowError(f"{model} is a Q/DQ model: read the scales it carries with --from-qdq {model}")
    if any(n.op_type == "EfficientNMS_TRT" for n in graph.graph.node):
        raise OrinflowError(f"{model} ends in EfficientNMS_TRT, which ONNX Runtime cannot run: give the raw "
                            "export (deploy appends the NMS)")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer):
        raise OrinflowError(f"{model} has FP16 weights: measure the cache on the FP32 export (TensorRT builds the "
                            "implicit engine from the floating-point graph and calibrates its FP32 ranges)")
    return fp32, graph


def _qdq_model(path: Path) -> onnx.ModelProto:
    from ...io import require_file

    qdq = require_file(path, "--from-qdq model")
    try:
        quantized = onnx.load(str(qdq))
    except Exception as e:
        raise OrinflowError(f"--from-qdq {qdq} is not a readable ONNX model ({type(e).__name__})") from e
    if not is_quantized(quantized):
        raise OrinflowError(f"--from-qdq {qdq} has no Q/DQ nodes: give the quantized model")
    return quantized


def _protected(fp32, graph, head_protect: bool) -> set[str]:
    return decode_outputs(graph) if fp32 is not None and fp32.processing.room.protects_decode and head_protect else set()


def _measured(fp32, scales: dict[str, float], array, dataset, say) -> dict:
    """The cache emulated against the FP32 model, or why it was not (no FP32 model, no images)."""
    from .cache_emulation import measure_cache

    if fp32 is None:
        return {"kind": "not measured", "why": "no FP32 model given (-m): the Q/DQ model's scales are its own"}
    if array is None:
        from ...data.calibration import build_calibration

        if dataset is None:
            return {"kind": "not measured", "why": "no images given"}
        array = build_calibration(fp32.processing, dataset, 32)
    return measure_cache(fp32, scales, array, dataset, say=say)
