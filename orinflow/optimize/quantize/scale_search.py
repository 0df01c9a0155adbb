"""--method search: each activation quantizer takes the calibration that serves the model's output best.

Max, entropy and percentile calibration each win on different layers, and which one wins is a
property of the model, not of a layer's name. So every activation quantizer of a max-calibrated
model gets a set of candidate ranges, all from the same calibration images:
- max |x|; the 99.9, 99.99 and 99.999 percentiles of |x|;
- the clip that minimises the expected INT8 error of the tensor's histogram ("mse");
- ModelOpt's entropy (KL) calibration.
A coordinate search in graph order then tries one quantizer's candidates at a time and keeps a
candidate only when the SQNR of the raw head outputs against FP32 rises. Quantizers that feed one
Concat move together, so the concat keeps the single scale TensorRT needs to fuse it.
The search runs one ONNX Runtime session whose scales are graph inputs, so a trial costs only the
images it runs, not a session build.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import OrinflowError
from ...progress import progress
from ..common.graph import GraphIndex, drop_unused_initializers
from ..common.probes import HeadProbe, head_tensors, sqnr_db
from .groups import UnionFind, quantizers
from .histograms import activation_histograms, amax_at_percentile

PERCENTILES = (99.9, 99.99, 99.999)
SEARCH_IMAGES = 16  # calibration images whose head outputs score every trial
MIN_CHANGE = 0.01  # candidates within 1% of the current scale are not worth a trial


@dataclass
class ScaleUnit:
    """Activation quantizers that share one scale (one tensor, or the inputs of one Concat)."""

    name: str
    tensors: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # their Q and DQ nodes
    scale: float = 0.0  # as calibrated (max)
    candidates: dict[str, float] = field(default_factory=dict)  # method -> scale


def scale_units(model: onnx.ModelProto) -> list[ScaleUnit]:
    """The activation scales of a symmetric Q/DQ model, concat inputs tied, in graph order."""
    index = GraphIndex(model)
    activations = [q for q in quantizers(index) if q.q is not None and not q.is_weight]
    by_dq = {q.dq: q for q in activations}
    ties = UnionFind()
    for q in activations:
        ties.find(q.q)
    for node in index.nodes:
        if node.op_type == "Concat":
            tied = [by_dq[p.name].q for t in node.input if (p := index.producer.get(t)) is not None and p.name in by_dq]
            for other in tied[1:]:
                ties.union(tied[0], other)
    nodes = {n.name: n for n in index.nodes}
    units: dict[str, ScaleUnit] = {}
    for q in activations:
        unit = units.setdefault(ties.find(q.q), ScaleUnit(name=q.tensor))
        if q.tensor not in unit.tensors:
            unit.tensors.append(q.tensor)
        for name in (q.q, q.dq):
            if name not in unit.nodes:
                unit.nodes.append(name)
            node = nodes[name]
            zero = index.initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero is not None and np.any(numpy_helper.to_array(zero)):
                raise OrinflowError("--method search needs symmetric activation scales (zero point 0, the "
                                    "tensorrt target)")
            unit.scale = max(unit.scale, float(numpy_helper.to_array(index.initializers[node.input[1]])))
    return list(units.values())


def mse_clip(amax: float, hist: np.ndarray, levels: int = 127) -> float:
    """The clip c minimising the expected squared error of INT8 over a histogram of |x| on [0, amax]:
    rounding noise (c/levels)^2/12 below c, plus (x - c)^2 above it."""
    width = amax / len(hist)
    centers = (np.arange(len(hist)) + 0.5) * width
    counts = hist.astype(np.float64)
    clips = (np.arange(len(hist)) + 1) * width
    below = np.cumsum(counts)
    tail_n = counts.sum() - below
    tail_x = counts @ centers - np.cumsum(counts * centers)
    tail_x2 = counts @ centers ** 2 - np.cumsum(counts * centers ** 2)
    error = below * (clips / levels) ** 2 / 12 + tail_x2 - 2 * clips * tail_x + clips ** 2 * tail_n
    return float(clips[int(np.argmin(error))])


def add_candidates(units: list[ScaleUnit], histograms: dict[str, tuple[float, np.ndarray]],
                   entropy: dict[str, float]) -> None:
    """Candidate scales per unit, each method's range mapped onto the unit's calibrated max scale."""
    for unit in units:
        if not all(t in histograms and histograms[t][0] > 0 for t in unit.tensors):
            continue
        amax = max(histograms[t][0] for t in unit.tensors)
        per_amax = unit.scale / amax  # the quantizer's scale per unit of range (1/127 for ModelOpt)
        ranges = {f"percentile {p}": max(amax_at_percentile(*histograms[t], p) for t in unit.tensors)
                  for p in PERCENTILES}
        ranges["mse"] = max(mse_clip(*histograms[t]) for t in unit.tensors)
        unit.candidates = {"max": unit.scale} | {m: r * per_amax for m, r in ranges.items()}
        if all(t in entropy for t in unit.tensors):
            unit.candidates["entropy"] = max(entropy[t] for t in unit.tensors)


def tensor_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The activation scale of each quantized tensor of a Q/DQ model, by tensor name."""
    return {t: unit.scale for unit in scale_units(model) for t in unit.tensors}


def _scale_inputs(model: onnx.ModelProto, units: list[ScaleUnit]) -> tuple[onnx.ModelProto, list[str], np.dtype]:
    """A copy whose unit scales are graph inputs, so one session can try any scales."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    index = GraphIndex(probe)
    nodes = {n.name: n for n in index.nodes}
    dtype = numpy_helper.to_array(index.initializers[nodes[units[0].nodes[0]].input[1]]).dtype
    names = []
    for k, unit in enumerate(units):
        name = f"orinflow_scale_{k}"
        for node_name in unit.nodes:
            nodes[node_name].input[1] = name
        probe.graph.input.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(dtype), []))
        names.append(name)
    return probe, names, dtype


def apply_scales(model: onnx.ModelProto, units: list[ScaleUnit], scales: list[float]) -> onnx.ModelProto:
    """A copy of `model` with each changed unit's Q and DQ reading one new scale initializer."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    index = GraphIndex(result)
    nodes = {n.name: n for n in index.nodes}
    for unit, scale in zip(units, scales):
        if scale == unit.scale:
            continue
        old = index.initializers[nodes[unit.nodes[0]].input[1]]
        name = f"{unit.name}_searched_scale"
        result.graph.initializer.append(numpy_helper.from_array(
            np.asarray(scale, dtype=numpy_helper.to_array(old).dtype), name))
        for node_name in unit.nodes:
            nodes[node_name].input[1] = name
    drop_unused_initializers(result)
    return result


def search_scales(fp32: onnx.ModelProto, quantized: onnx.ModelProto, units: list[ScaleUnit], probe: HeadProbe,
                  say=print) -> tuple[onnx.ModelProto, dict]:
    """Coordinate search over the units' candidates; returns the searched model and what was tried."""
    started = time.perf_counter()
    units = [u for u in units if u.candidates]
    if not units:
        raise OrinflowError("--method search found no activation quantizers with calibration ranges")
    reference = probe.outputs(fp32)
    graph, names, dtype = _scale_inputs(quantized, units)
    session = probe.session(graph)
    scales = [u.scale for u in units]

    def score(values: list[float]) -> float:
        feeds = {n: np.asarray(v, dtype) for n, v in zip(names, values)}
        return sqnr_db(reference, probe.run(session, feeds))

    before = best = score(scales)
    trials, chosen = 0, []
    for k, unit in enumerate(progress(units, f"scale search: {len(units)} activation scales on "
                                             f"{len(probe.images)} images")):
        method = "max"
        for candidate, value in unit.candidates.items():
            if abs(value - scales[k]) <= MIN_CHANGE * scales[k]:
                continue
            trial = scales[:k] + [value] + scales[k + 1:]
            trials += 1
            result = score(trial)
            if result > best:
                best, method, scales = result, candidate, trial
        chosen.append({"tensors": unit.tensors, "method": method, "scale": scales[k], "max_scale": unit.scale})
    counts = {m: sum(c["method"] == m for c in chosen) for m in dict.fromkeys(c["method"] for c in chosen)}
    say(f"scale search: head SQNR {before:.2f} -> {best:.2f} dB, {trials} trials; chosen {counts}")
    record = {"images": len(probe.images), "sqnr_db_max": before, "sqnr_db": best, "trials": trials,
              "chosen": counts, "units": chosen, "seconds": round(time.perf_counter() - started, 1)}
    return apply_scales(quantized, units, scales), record


def search_quantized(src: Path, task: str, calib: np.ndarray, quantized: onnx.ModelProto,
                     entropy: onnx.ModelProto, threads: int | None = None, say=print) -> tuple[onnx.ModelProto, dict]:
    """The whole --method search on a max-calibrated model: candidates, then the search."""
    fp32 = onnx.load(str(src))
    units = scale_units(quantized)
    if not units:
        raise OrinflowError("--method search: the quantized model has no activation quantizers")
    known = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    tensors = sorted({t for u in units for t in u.tensors} & known)  # a unit without ranges keeps max
    add_candidates(units, activation_histograms(src, calib, tensors), tensor_scales(entropy))
    probe = HeadProbe(np.asarray(calib[:SEARCH_IMAGES], np.float32), head_tensors(fp32, task), threads)
    return search_scales(fp32, quantized, units, probe, say)
