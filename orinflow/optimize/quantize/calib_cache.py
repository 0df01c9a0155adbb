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
- entropy: TensorRT's entropy calibration as NVIDIA describes it for its MLPerf submissions (calibration.md
  of NVIDIA's MLPerf Inference results): for each bin B of a 2048-bin histogram of |x| (its first bin
  discarded), fold every count beyond B into B, merge that truncated histogram into 127 bins of equal range
  between 0 and the middle of B (the last fine bin into the last coarse bin), spread each coarse count evenly
  over its non-empty fine bins, and keep the B whose KL divergence from the truncated histogram is least;
  the range is the middle of that bin. How TensorRT treats empty bins is not published: here they get no
  mass, and only non-empty bins enter the divergence.
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
from ..common.graph import QDQ_OPS
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
    """KL divergence of each candidate last bin B (B >= levels) of a histogram of |x|, first bin discarded.

    Fine bin i goes to coarse bin floor((i + 0.5) levels / (B + 0.5)) (the last fine bin to the last coarse bin),
    so coarse bin j starts at fine bin ceil((j (2B + 1) - levels) / (2 levels)), in integers. With P the truncated
    histogram (total T), every non-empty fine bin of coarse bin j holds m_j / n_j in Q (the bin's mass over its
    n_j non-empty fine bins), so KL(P || Q) = (sum_i P_i log P_i - sum_j m_j log(m_j / n_j)) / T: prefix sums
    give every B at once."""
    counts = np.asarray(hist, np.float64).copy()
    counts[0] = 0.0
    if len(counts) <= levels:
        return {}
    last = np.arange(levels, len(counts))[:, None]  # candidate B per row
    coarse = np.arange(levels)[None, :]
    starts = np.maximum(0, -((levels - coarse * (2 * last + 1)) // (2 * levels)))
    ends = np.concatenate([starts[:, 1:], last + 1], axis=1)
    below = np.minimum(ends, last)  # fine bins before B; bin B itself holds the tail
    sums = np.concatenate([[0.0], np.cumsum(counts)])
    filled = np.concatenate([[0], np.cumsum(counts > 0)])
    tail = sums[-1] - sums[last[:, 0]]
    mass = sums[below] - sums[np.minimum(starts, below)]
    occupied = (filled[below] - filled[np.minimum(starts, below)]).astype(np.float64)
    mass[:, -1] += tail
    occupied[:, -1] += tail > 0

    def xlogx(x, scale=1.0):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / scale), 0.0)

    plogp = np.concatenate([[0.0], np.cumsum(xlogx(counts))])
    own = plogp[last[:, 0]] + xlogx(tail)
    spread = xlogx(mass, np.maximum(occupied, 1.0)).sum(1)
    total = sums[last[:, 0]] + tail
    kl = np.where(total > 0, (own - spread) / np.where(total > 0, total, 1.0), 0.0)
    return dict(zip(last[:, 0].tolist(), np.maximum(kl, 0.0).tolist()))


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


def qdq_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The scales a Q/DQ model's per-tensor INT8 activation quantizers carry, by the tensor each one quantizes."""
    weights = {t.name: t for t in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in weights or node.input[1] not in weights:
            continue
        scale = numpy_helper.to_array(weights[node.input[1]])
        zero = numpy_helper.to_array(weights[node.input[2]]) if len(node.input) > 2 and node.input[2] in weights \
            else np.zeros((), np.uint8)
        if scale.size == 1 and zero.dtype == np.int8:
            scales[node.input[0]] = float(scale.reshape(()))
    if not scales:
        raise OrinflowError("the model has no per-tensor INT8 activation quantizers to read scales from")
    return scales


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def cache_text(scales: dict[str, float]) -> str:
    lines = [CACHE_HEADER] + [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(scales: dict[str, float], path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(cache_text(scales))


def read_cache(path: Path) -> tuple[str, dict[str, float]]:
    """The header and the scales of a TensorRT calibration cache."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OrinflowError(f"{path} is not a readable calibration cache ({type(e).__name__})") from e
    if not lines or not lines[0].startswith("TRT-"):
        raise OrinflowError(f"{path} is not a TensorRT calibration cache (its first line is not TRT-<version>-...)")
    scales = {}
    for number, line in enumerate(lines[1:], 2):
        match = LINE.match(line.strip())
        if not match:
            raise OrinflowError(f"{path}:{number}: not a `tensor: <8 hex digits>` line")
        scales[match.group(1)] = struct.unpack(">f", bytes.fromhex(match.group(2)))[0]
    return lines[0], scales
