"""Route 1, post-training quantization of an orinflow ONNX: two targets, one entry point.

tensorrt: NVIDIA ModelOpt places Q/DQ where TensorRT fuses it (symmetric, per-channel
          weights, per-tensor activations, zero point 0).
cpu:      ONNX Runtime static quantization in the QDQ layout its CPU provider fuses into
          integer kernels (uint8 activations, int8 per-channel weights).
Both keep a detector's decode in high precision unless head protection is turned off.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ...errors import OrinflowError
from ...io import atomic_path, check_output, private_copy, private_folder, write_record
from ...models.onnx_model import ALIGNED_METADATA, OnnxModel, read_metadata, write_metadata
from ...progress import status
from ..common import quietly
from ..common.graph import QDQ_OPS, decode_nodes, drop_unused_initializers
from ..common.qdq_report import qdq_report
from ..common.sparse24 import sparsity_summary
from .cpu_layout import align_conv_channels, quantize_before_space_to_depth
from .calib_cache import LEVELS, write_cache
from .scale_search import mse_clip
from .histograms import activation_histograms, percentile_amax
from .ort_worker import CALIB_CHUNK
from ...tasks import task_room

MODES = ("int8", "fp8", "int4")
AUTO = "auto"  # under --max-drop: the calibration chosen by measurement on the selection data (calib_choice.py)
METHODS = ("entropy", "max", "percentile", "mse", "search", AUTO)
HISTOGRAM_METHODS = ("percentile", "mse")  # amax per tensor from orinflow's own histograms, handed to ModelOpt
TARGETS = ("tensorrt", "cpu")
HIGH_PRECISION = ("fp32", "fp16")


def default_method(target: str, mode: str = "int8", budget: bool = False) -> str:
    """The calibration method when none is given: under an accuracy budget (--max-drop, int8) the one the
    selection data measures best (auto: neither entropy nor search wins on every model, docs/sensitivity.md);
    entropy otherwise."""
    return AUTO if budget and mode == "int8" else "entropy"


@dataclass
class QuantizeSpec:
    mode: str = "int8"
    method: str = "entropy"
    target: str = "tensorrt"
    percentile: float = 99.999
    exclude: list[str] = field(default_factory=list)  # node-name regexes kept in high precision
    head_protect: bool = True
    high_precision: str = "fp32"
    reduce_range: bool = False  # cpu target: 7-bit weights, so u8 x s8 pair sums never saturate without VNNI

    def validate(self) -> None:
        for value, allowed, flag in ((self.mode, MODES, "--mode"), (self.method, METHODS, "--method"),
                                     (self.target, TARGETS, "--target"),
                                     (self.high_precision, HIGH_PRECISION, "--high-precision")):
            if value not in allowed:
                raise OrinflowError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")
        if self.target == "cpu" and self.mode != "int8":
            raise OrinflowError(f"--mode {self.mode} cannot run on ONNX Runtime's CPU provider (no {self.mode} "
                                "kernels); use --target tensorrt and run it on a GPU that has them")
        if self.reduce_range and self.target != "cpu":
            raise OrinflowError("--reduce-range gives ONNX Runtime's CPU kernels 7-bit weights: it is for --target cpu "
                                "(TensorRT's INT8 has no 16-bit intermediate to saturate)")
        if self.method == "search" and (self.target != "tensorrt" or self.mode != "int8"):
            raise OrinflowError("--method search chooses INT8 activation scales per quantizer for --target tensorrt "
                                "--mode int8 only")
        if self.method == AUTO and self.mode != "int8":
            raise OrinflowError("--method auto chooses an INT8 calibration under --max-drop; give --method for "
                                f"--mode {self.mode}")
        if self.method == "mse" and (self.target != "tensorrt" or self.mode not in ("int8", "fp8")):
            raise OrinflowError("--method mse clips activations where INT8's squared error is least: it is for "
                                "--target tensorrt (int8 or fp8)")
        if self.mode == "int4" and self.method == "percentile":
            raise OrinflowError("--mode int4 is weight-only: calibrate with --method max or entropy")
        if not 90 < self.percentile < 100:
            raise OrinflowError(f"--percentile must be between 90 and 100, got {self.percentile}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as e:
                raise OrinflowError(f"--exclude {pattern!r} is not a valid regex: {e}") from None


def check_not_quantized(model: onnx.ModelProto, path: Path) -> None:
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        raise OrinflowError(f"{path} is already quantized (it has Q/DQ nodes); quantize the FP32 export instead")


def excluded_nodes(model: onnx.ModelProto, spec: QuantizeSpec, task: str) -> list[str]:
    """Decode nodes (detectors, when protected) plus the user's --exclude regexes."""
    names = decode_nodes(model) if spec.head_protect and task_room(task).protects_decode else []
    patterns = [re.compile(p) for p in spec.exclude]
    names += [n.name for n in model.graph.node if any(p.search(n.name) for p in patterns) and n.name not in names]
    return names


def quantize_onnx(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, output: Path, say=print) -> dict:
    """Quantize `source` with `calib` (already checked against its input) into `output`; return the record.

    `say` receives progress lines (only --method search prints one).
    """
    spec.validate()
    if spec.method == AUTO:
        raise OrinflowError("--method auto chooses the calibration by measurement under an accuracy budget: add "
                            "--max-drop (and --select-yaml), or name a method")
    if len(calib) == 0:
        raise OrinflowError("the calibration set is empty")
    model = onnx.load(str(source.path))
    check_not_quantized(model, source.path)
    check_output(output, (".onnx",), [source.path], command="quantize")
    exclude = excluded_nodes(model, spec, source.task)
    started = time.perf_counter()
    engine = "ModelOpt" if spec.target == "tensorrt" else "ONNX Runtime"
    with atomic_path(output) as tmp:
        with status(f"{engine}: calibrating {len(calib)} images and quantizing ({spec.mode}, {spec.method})"):
            aligned_convs: dict[str, dict] = {}
            if spec.target == "tensorrt":
                quantized = _modelopt_quantize(source.path, calib, spec, exclude)
            else:
                aligned_convs = _ort_quantize(source.path, calib, spec, exclude, tmp)
                quantized = onnx.load(str(tmp))
        search = _search_scales(source, calib, spec, exclude, quantized, say) if spec.method == "search" else None
        if search:
            quantized = search[0]
        if spec.target == "cpu":
            quantize_before_space_to_depth(quantized)
        extra = {ALIGNED_METADATA: json.dumps(aligned_convs)} if aligned_convs else {}
        write_metadata(quantized, read_metadata(model) | {"orinflow.quantization": _spec_json(spec)} | extra)
        onnx.save(quantized, str(tmp))
        report = qdq_report(quantized, spec.target, spec.mode, set(exclude) if source.processing.room.protects_decode else set())
        if report["quantized_compute_nodes"] == 0:
            raise OrinflowError(f"--mode {spec.mode} quantized none of this model's {report['compute_nodes']} "
                                "conv/GEMM nodes" + (" (ModelOpt's INT4 is weight-only for MatMul/Gemm, which "
                                                     "convolutional models barely have)" if spec.mode == "int4" else ""))
    record = {
        "command": "quantize", "model": str(output), "source": str(source.path), "task": source.task,
        "quantization": asdict(spec), "calibration_images": int(len(calib)), "excluded_nodes": exclude,
        "qdq_report": report, "sparsity": sparsity_summary(onnx.load(str(output))),
        "channel_aligned_convs": aligned_convs,
        **({"scale_search": search[1]} if search else {}),
        "seconds": round(time.perf_counter() - started, 1),
        "size_bytes": Path(output).stat().st_size,
    }
    write_record(Path(output), record)
    return record


def _search_scales(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, exclude: list[str],
                   quantized: onnx.ModelProto, say) -> tuple[onnx.ModelProto, dict]:
    """--method search: ModelOpt's entropy scales join the candidates of the max-calibrated model."""
    from .scale_search import search_quantized

    with status(f"ModelOpt: entropy calibration of {len(calib)} images (candidate scales)"):
        entropy = _modelopt_quantize(source.path, calib, replace(spec, method="entropy"), exclude)
    return search_quantized(source.path, source.task, calib, quantized, entropy, say=say)


def check_cpu_kernels(record: dict, processing, calib: np.ndarray, say=print) -> dict:
    """A cpu-target model on this CPU's ONNX Runtime integer kernels, checked against its exact function on
    calibration images (runtime/trust.py): the record says which kernels its figures here come from, and a
    disagreement is printed with its remedy."""
    from ...io import write_record
    from ...runtime.checked import checked_runner
    from ...runtime.cpu import cpu_model, describe_features
    from ...runtime.trust import probe_count

    runner = checked_runner(record["model"], "onnxruntime")
    runner.settle(np.asarray(calib[:probe_count(processing.imgsz)], np.float32))
    if runner.verdict is None:
        return record
    verdict = runner.verdict
    record = {**record, "int8_kernels": {"onnxruntime": {key: verdict[key] for key in ("used", "kind", "reason")}
                                         | {"cpu": f"{cpu_model()}; {describe_features()}"}}}
    if verdict["kind"] == "exact":
        say(f"note: on this CPU ({cpu_model()}; {describe_features()}) ONNX Runtime's integer kernels disagree with "
            f"this model's exact function ({verdict['reason'].split('(', 1)[-1].rstrip(')')}): its figures here "
            "come from the exact path, at float speed. On CPUs without VNNI, --reduce-range (7-bit weights) keeps "
            "the kernels' 16-bit sums from saturating")
    write_record(Path(record["model"]), record)
    return record


def _spec_json(spec: QuantizeSpec) -> str:
    return json.dumps(asdict(spec))


# ------------------------------------------------------------------ tensorrt target (ModelOpt)
def _modelopt_quantize(src: Path, calib: np.ndarray, spec: QuantizeSpec, exclude: list[str]) -> onnx.ModelProto:
    """ModelOpt's Q/DQ model of `src` (INT8: with its concat scales aligned)."""
    from ..common import import_quietly

    try:
        modelopt_quantize = import_quietly("modelopt.onnx.quantization").quantize
    except ImportError as e:
        raise OrinflowError(f"NVIDIA ModelOpt's ONNX quantization is not importable ({e})") from e
    method = {"entropy": "entropy", "max": "max", "percentile": "max", "mse": "max", "search": "max"}[spec.method]
    if spec.mode == "int4":
        method = "rtn_dq" if spec.method == "max" else "awq_clip"
    # ModelOpt saves its shape-inferred model over the path it is given, and its intermediate models
    # beside its output: it only ever sees a private copy and writes into the private folder.
    with private_folder() as work:
        src, quantized = private_copy(src, work), work / "quantized.onnx"
        input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
        cache = _histogram_cache(src, calib, spec, work) if spec.method in HISTOGRAM_METHODS else None
        try:
            with quietly():
                modelopt_quantize(
                    str(src), quantize_mode=spec.mode, calibration_data={input_name: np.asarray(calib)},
                    calibration_method=method, calibration_cache_path=str(cache) if cache else None,
                    calibration_eps=["cpu"], nodes_to_exclude=[f"^{re.escape(n)}$" for n in exclude] or None,
                    high_precision_dtype=spec.high_precision, output_path=str(quantized), log_level="ERROR",
                )
        except Exception as e:
            raise OrinflowError(f"ModelOpt {spec.mode} quantization failed: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from e
        if not quantized.exists() or quantized.stat().st_size == 0:
            raise OrinflowError(f"ModelOpt wrote no model for --mode {spec.mode}")
        model = onnx.load(str(quantized))
    if spec.mode == "int8":
        align_concat_scales(model)
    return model


def align_concat_scales(model: onnx.ModelProto) -> int:
    """Give every quantized input of a Concat the largest of their scales (TensorRT then fuses the concat).

    Each input's Q and DQ share the change, so the quantized values stay consistent.
    Returns how many concats were changed.
    """
    from onnx import numpy_helper

    from ..common.graph import GraphIndex

    index = GraphIndex(model)
    changed = 0
    for node in index.nodes:
        if node.op_type != "Concat":
            continue
        dqs = [p for t in node.input if (p := index.producer.get(t)) is not None and p.op_type == "DequantizeLinear"]
        scales = [index.initializers.get(dq.input[1]) for dq in dqs]
        if len(dqs) < 2 or any(s is None or s.dims for s in scales):  # per-tensor scalars only
            continue
        values = [float(numpy_helper.to_array(s)) for s in scales]
        if np.allclose(values, values[0], rtol=1e-6):
            continue
        target = max(values)
        for dq in dqs:
            q = index.producer.get(dq.input[0])
            for holder in (dq, q):
                if holder is not None and holder.op_type in QDQ_OPS:
                    _set_scale(model, index, holder, target)
        changed += 1
    if changed:
        drop_unused_initializers(model)  # the scales the alignment replaced
    return changed


def _set_scale(model: onnx.ModelProto, index, node: onnx.NodeProto, value: float) -> None:
    """Point this Q/DQ node at its own scalar scale initializer holding `value`."""
    from onnx import numpy_helper

    old = index.initializers[node.input[1]]
    name = f"{node.name}_aligned_scale"
    if name not in index.initializers:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=numpy_helper.to_array(old).dtype), name)
        model.graph.initializer.append(tensor)
        index.initializers[name] = tensor
    node.input[1] = name


def _histogram_cache(src: Path, calib: np.ndarray, spec: QuantizeSpec, work: Path) -> Path:
    """Activation amax from histograms of |x| (at a percentile, or the clip of least INT8 squared error), written
    as a TensorRT calibration cache for ModelOpt."""
    cache = work / f"{spec.method}.cache"
    if spec.method == "percentile":
        amax = percentile_amax(src, calib, spec.percentile)
    else:
        amax = {t: mse_clip(top, hist, LEVELS) for t, (top, hist) in activation_histograms(src, calib).items()
                if hist.sum()}
    write_cache({name: max(value, 1e-8) / LEVELS for name, value in amax.items()}, cache)
    return cache


# ------------------------------------------------------------------ cpu target (ONNX Runtime)
def _ort_quantize(src: Path, calib: np.ndarray, spec: QuantizeSpec, exclude: list[str], out: Path) -> dict[str, dict]:
    """Re-lays the convs for ONNX Runtime's fast kernels (cpu_layout.py) and returns them; the
    quantization runs in a fresh interpreter, as importing ModelOpt patches ONNX Runtime's calibrators.
    """
    import subprocess
    import sys

    with private_folder() as work:
        model = onnx.load(str(src))
        aligned_convs = align_conv_channels(model, skip=set(exclude))
        aligned = work / "aligned.onnx"
        onnx.save(model, str(aligned))
        calib_path = work / "calib.npy"
        np.save(calib_path, np.asarray(calib, np.float32))
        job = {"src": str(aligned), "calib": str(calib_path), "method": spec.method, "percentile": spec.percentile,
               "exclude": exclude, "out": str(out), "work": str(work), "chunk": CALIB_CHUNK,
               "reduce_range": spec.reduce_range}
        done = subprocess.run([sys.executable, "-m", "orinflow.optimize.quantize.ort_worker", json.dumps(job)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        raise OrinflowError(f"ONNX Runtime quantization failed: {lines[-1] if lines else done.returncode}")
    return aligned_convs
