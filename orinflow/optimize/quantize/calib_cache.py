"""TensorRT calibration caches, for implicit INT8 (trtexec --calib, DLA, DeepStream's int8-calib-file).

A cache holds one scale per activation tensor of the FP32 network, named as TensorRT's ONNX parser names
tensors (the ONNX tensor names). Its text format: a header line `TRT-<version>-<algorithm>`, then one line
`<tensor>: <hex>` per tensor, where <hex> is the big-endian float32 of the scale, amax / 127. trtexec reads
it with --calib and calibrates nothing itself; the header names EntropyCalibration2, the calibrator trtexec
and DLA use (a cache whose header names another algorithm is ignored by a calibrator of this kind).

The ranges are measured here, on the user's calibration set, with the model's own preprocessing:
- max: the largest |x|;
- percentile: the |x| below which `percentile` % of the values lie;
- mse: the clip that minimises the expected squared INT8 error (scale_search.mse_clip);
- entropy: TensorRT's entropy calibration as NVIDIA's reference describes it (GTC 2017 "8-bit Inference with
  TensorRT"; calibration.md of NVIDIA's MLPerf Inference results): for each bin B of a 2048-bin histogram of
  |x| (its first bin discarded), the reference is the histogram truncated at B with every count beyond B
  folded into B; the candidate merges the truncated histogram without those outliers into 127 bins of equal
  range between 0 and the middle of B (the last fine bin into the last coarse bin) and spreads each coarse
  count evenly over its non-empty fine bins; the B whose KL divergence is least wins, and the range is the
  middle of that bin. Empty bins get no mass.
Or they are read from a Q/DQ model's activation quantizers (`qdq_scales`), so that an implicit build and an
explicit one share one calibration.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import OrinflowError
from ...io import atomic_path
from ..common.graph import QDQ_OPS, decode_nodes
from .histograms import activation_histograms, amax_at_percentile
from .scale_search import mse_clip

CACHE_HEADER = "TRT-8600-EntropyCalibration2"  # read by TensorRT 8.6 and 10 (trtexec --calib, DLA)
METHODS = ("entropy", "max", "percentile", "mse")
LEVELS = 127  # positive INT8 levels: scale = amax / 127
BINS = 2048
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """The network's floating-point activations in graph order: its inputs and every node output whose type
    (from shape inference) is a float. Weights, shape arithmetic and integer outputs are not activations."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                              *inferred.graph.output]}
    weights = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in weights and types.get(i.name) in FLOAT_TYPES]
    for node in model.graph.node:
        names += [t for t in node.output if t and types.get(t) in FLOAT_TYPES and node.op_type != "Constant"]
    return names


def entropy_divergences(hist: np.ndarray, levels: int = LEVELS) -> dict[int, float]:
    """KL divergence of each candidate last bin B (B >= levels) of a histogram of |x|, first bin discarded, as
    NVIDIA's reference computes it: the reference P is the histogram truncated at B with every count beyond B
    folded into bin B; the candidate Q is built from the truncated histogram *without* those outliers, merged
    into `levels` coarse bins and spread evenly over the fine bins where P is not empty. Folding the outliers
    into Q too would make every small range look free on a sparse histogram (an image's 256 pixel values in
    2048 bins), and the smallest would win.

    Fine bin i goes to coarse bin floor((i + 0.5) levels / (B + 0.5)) (the last fine bin to the last coarse bin).
    With m_j and n_j coarse bin j's count and its non-empty fine bins, Q_i = m_j / n_j, P's total S and Q's
    S - tail: KL(P || Q) = (sum_i P_i log P_i - sum_j Pm_j log(m_j / n_j)) / S - log S + log(S - tail), Pm_j
    being P's mass in coarse bin j. Prefix sums give every B at once; a B whose outliers land where Q is
    empty diverges infinitely."""
    counts = np.asarray(hist, np.float64).copy()
    counts[0] = 0.0
    if len(counts) <= levels or counts.sum() <= 0:
        return {}
    last = np.arange(levels, len(counts))[:, None]  # candidate B per row
    coarse = np.arange(levels)[None, :]
    starts = np.maximum(0, -((levels - coarse * (2 * last + 1)) // (2 * levels)))
    ends = np.concatenate([starts[:, 1:], last + 1], axis=1)  # coarse bin j covers fine bins [start, end)
    sums = np.concatenate([[0.0], np.cumsum(counts)])
    filled = np.concatenate([[0], np.cumsum(counts > 0)])
    total = sums[-1]
    beyond = total - sums[last[:, 0] + 1]  # the outliers past bin B
    mass = sums[ends] - sums[starts]  # Q's coarse counts, outliers left out
    occupied = (filled[ends] - filled[starts]).astype(np.float64)
    bin_b = counts[last[:, 0]]
    occupied[:, -1] += (bin_b == 0) & (beyond > 0)  # bin B is not empty in P when outliers land there
    p_mass = mass.copy()
    p_mass[:, -1] += beyond

    def xlogx(x, scale=1.0):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / scale), 0.0)

    plogp = np.concatenate([[0.0], np.cumsum(xlogx(counts))])
    own = plogp[last[:, 0]] + xlogx(bin_b + beyond)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(p_mass > 0, p_mass * np.log(np.where(mass > 0, mass, 1.0) / np.maximum(occupied, 1.0)), 0.0)
    kl = (own - cross.sum(1)) / total - np.log(total) + np.log(np.maximum(total - beyond, 1e-300))
    kl = np.where((p_mass > 0).any(1) & ((p_mass > 0) & (mass <= 0)).any(1), np.inf, np.maximum(kl, 0.0))
    return dict(zip(last[:, 0].tolist(), kl.tolist()))


def entropy_amax(hist: np.ndarray, amax: float, levels: int = LEVELS) -> float:
    """The range entropy calibration chooses for a histogram of |x| over [0, amax] (the middle of bin B)."""
    if len(hist) <= levels or amax <= 0:
        return float(amax)
    divergences = entropy_divergences(hist, levels)
    best = min(divergences, key=lambda b: (divergences[b], b))
    return (best + 0.5) * amax / len(hist)


def method_amax(method: str, amax: float, hist: np.ndarray, percentile: float) -> float:
    if method == "max" or amax <= 0:
        return float(amax)
    if method == "percentile":
        return amax_at_percentile(amax, hist, percentile)
    if method == "mse":
        return mse_clip(amax, hist, LEVELS)
    return entropy_amax(hist, amax)


def measured_scales(model_path: Path, calib: np.ndarray, method: str, percentile: float = 99.99) -> dict[str, float]:
    """Scale (amax / 127) of every activation tensor of the FP32 model, measured on `calib` with `method`."""
    if method not in METHODS:
        raise OrinflowError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    model = onnx.load(str(model_path))
    tensors = activation_tensors(model)
    inputs = {i.name for i in model.graph.input}
    histograms = activation_histograms(model_path, calib, [t for t in tensors if t not in inputs], bins=BINS)
    for name in inputs & set(tensors):  # the network input is the calibration set itself
        values = np.abs(np.asarray(calib, np.float32))
        top = float(values.max()) if values.size else 0.0
        histograms[name] = (top, np.histogram(values, bins=BINS, range=(0.0, top or 1.0))[0])
    return {t: max(method_amax(method, *histograms[t], percentile), 1e-8) / LEVELS for t in tensors}


def qdq_scales(model: onnx.ModelProto, name: str = "the model") -> dict[str, float]:
    """The scales a Q/DQ model's per-tensor INT8 activation quantizers carry, by the tensor each one quantizes."""
    weights = {t.name: t for t in model.graph.initializer}
    scales, asymmetric = {}, 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in weights or node.input[1] not in weights:
            continue
        scale = numpy_helper.to_array(weights[node.input[1]])
        zero = numpy_helper.to_array(weights[node.input[2]]) if len(node.input) > 2 and node.input[2] in weights \
            else np.zeros((), np.uint8)
        if scale.size == 1 and zero.dtype == np.int8 and not zero.any():
            scales[node.input[0]] = float(scale.reshape(()))
        else:
            asymmetric += 1
    if not scales:
        why = (f"its {asymmetric} activation quantizers are uint8 with zero points (a --target cpu model), and a "
               "TensorRT cache holds symmetric int8 ranges: read the scales of a --target tensorrt model"
               if asymmetric else "it has no per-tensor activation quantizer")
        raise OrinflowError(f"--from-qdq {name}: no INT8 activation scale to read: {why}")
    return scales


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def cache_text(scales: dict[str, float]) -> str:
    from ...formats import cache_tensor

    lines = [CACHE_HEADER] + [f"{cache_tensor(name)}: {struct.pack('>f', scale).hex()}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(scales: dict[str, float], path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(cache_text(scales))


MAX_CACHE_BYTES = 64 * 2 ** 20  # a cache holds one short line per tensor: far larger is not a cache
HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
SMALLEST_SCALE = float(np.finfo(np.float32).tiny)  # below: a denormal, which no real range gives


def read_cache(path: Path) -> tuple[str, dict[str, float]]:
    """The header and the scales of a TensorRT calibration cache, every line checked: a header TRT-<version>-
    <calibrator>, at least one tensor, each once, each scale a normal positive float."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            raise OrinflowError(f"{path} is {path.stat().st_size / 2 ** 20:.0f} MB: not a calibration cache (one "
                                f"line per tensor; the limit is {MAX_CACHE_BYTES // 2 ** 20} MB)")
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OrinflowError(f"{path} is not a readable calibration cache ({type(e).__name__})") from e
    if not lines or not HEADER.match(lines[0].strip()):
        raise OrinflowError(f"{path} is not a TensorRT calibration cache (its first line is not TRT-<version>-"
                            "<calibrator>)")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], 2):
        match = LINE.match(line.strip())
        if not match:
            raise OrinflowError(f"{path}:{number}: not a `tensor: <8 hex digits>` line")
        name, scale = match.group(1), struct.unpack(">f", bytes.fromhex(match.group(2)))[0]
        if name in scales:
            raise OrinflowError(f"{path}:{number}: tensor {name!r} is listed twice")
        if not np.isfinite(scale) or scale < SMALLEST_SCALE:
            raise OrinflowError(f"{path}:{number}: tensor {name!r} has scale {scale!r}, which no INT8 range gives "
                                "(a scale is amax / 127: finite, positive, not denormal)")
        scales[name] = scale
    if not scales:
        raise OrinflowError(f"{path} holds a header and no tensor")
    return lines[0].strip(), scales


def calibrator(header: str) -> str:
    """The calibrator a cache's header names (TRT-8600-EntropyCalibration2 -> EntropyCalibration2)."""
    return HEADER.match(header).group(2)


def decode_outputs(graph) -> set[str]:
    """The tensors a detector's decode writes (optimize/common/graph.decode_nodes), found from the graph."""
    decode = set(decode_nodes(graph))
    return {t for n in graph.graph.node if n.name in decode for t in n.output}


def cache_summary(path: Path, graph: onnx.ModelProto | None) -> dict:
    """A calibration cache's header, tensor count and scale range; with the model's graph, its activations that
    the cache misses (TensorRT runs those in higher precision) and its names the graph does not have."""
    header, scales = read_cache(path)
    summary = {"path": str(path), "header": header, "tensors": len(scales),
               "scale_range": [min(scales.values()), max(scales.values())] if scales else None,
               "amax_range": [min(scales.values()) * LEVELS, max(scales.values()) * LEVELS] if scales else None}
    if graph is not None:
        activations = activation_tensors(graph)
        summary.update(activations=len(activations), missing=[t for t in activations if t not in scales],
                       unknown=[t for t in scales if t not in set(activations)])
    return summary
