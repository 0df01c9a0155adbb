"""Activation statistics over a calibration set: max |x| and a histogram of |x| per tensor, streamed image by
image, and the amax at a percentile of them (the percentile method; the scale search's candidates)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

QUANTIZABLE_INPUT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool",
                         "GlobalAveragePool", "Resize", "Mul"}


def percentile_amax(src: Path, calib: np.ndarray, percentile: float, bins: int = 2048) -> dict[str, float]:
    """Per-tensor percentile of |activation| over the calibration set, for the inputs of quantizable ops."""
    return {t: amax_at_percentile(amax, hist, percentile)
            for t, (amax, hist) in activation_histograms(src, calib, bins=bins).items() if hist.sum()}


def amax_at_percentile(amax: float, hist: np.ndarray, percentile: float) -> float:
    """The |x| below which `percentile` % of a histogram over [0, amax] lies (a bin's upper edge)."""
    edge = int(np.searchsorted(np.cumsum(hist), hist.sum() * percentile / 100.0))
    return amax * min(edge + 1, len(hist)) / len(hist)


def activation_histograms(src: Path, calib: np.ndarray, tensors: list[str] | None = None,
                          bins: int = 2048) -> dict[str, tuple[float, np.ndarray]]:
    """max |x| and a histogram of |x| over [0, max] for each tensor (default: inputs of quantizable ops).

    Two streaming passes (max, then the histogram), image by image, so memory stays bounded
    however large the calibration set is.
    """
    import onnxruntime as ort

    model = onnx.load(str(src))
    index_inputs = {t.name for t in model.graph.initializer}
    if tensors is None:
        tensors = sorted({i for n in model.graph.node if n.op_type in QUANTIZABLE_INPUT_OPS for i in n.input
                          if i and i not in index_inputs})
    graph_outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in graph_outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def chunks():  # one image at a time: exported graphs usually have a static batch of 1
        for i in range(len(calib)):
            yield dict(zip(tensors, session.run(tensors, {input_name: np.asarray(calib[i:i + 1], np.float32)})))

    amax = {t: 0.0 for t in tensors}
    for outputs in chunks():
        for t, value in outputs.items():
            amax[t] = max(amax[t], float(np.abs(value).max()) if value.size else 0.0)
    for t, top in amax.items():
        check_range(t, top)
    hist = {t: np.zeros(bins, np.int64) for t in tensors}
    for outputs in chunks():
        for t, value in outputs.items():
            if amax[t] > 0:
                try:
                    hist[t] += np.histogram(np.abs(value.astype(np.float64)), bins=bins, range=(0.0, amax[t]))[0]
                except ValueError as e:
                    from ...errors import OrinflowError

                    raise OrinflowError(f"activation {t!r}: no histogram of its range 0..{amax[t]:.3g} ({e})") from e
    return {t: (amax[t], hist[t]) for t in tensors}


def check_range(tensor: str, amax: float) -> None:
    """A tensor's range must be finite: an inf or NaN (an FP16 export overflowing, a bad calibration image) has
    no scale, and NumPy's histogram of it fails with a message that names no tensor."""
    from ...errors import OrinflowError

    if not np.isfinite(amax):
        raise OrinflowError(f"activation {tensor!r} reaches {amax} on the calibration images, which has no INT8 "
                            "range: calibrate the FP32 model (an FP16 export overflows there), and check the "
                            "calibration images")
