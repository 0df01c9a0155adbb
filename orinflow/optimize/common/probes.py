"""Measuring a quantized model's output error against FP32: the raw head tensors, their SQNR, and a
runner that feeds model variants (or variants whose scales are graph inputs) a few images."""
from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphIndex, decode_nodes
from ...tasks import task_room


def head_tensors(model: onnx.ModelProto, task: str) -> list[str]:
    """The raw head outputs: for a detector the tensors its decode reads, otherwise the graph outputs."""
    outputs = [o.name for o in model.graph.output]
    if not task_room(task).protects_decode:
        return outputs
    decode = set(decode_nodes(model))
    index = GraphIndex(model)
    heads = []
    for node in index.nodes:
        if node.name in decode:
            for tensor in node.input:
                producer = index.producer.get(tensor)
                if producer is not None and producer.name not in decode and tensor not in heads:
                    heads.append(tensor)
    return heads or outputs


def sqnr_db(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio over all head tensors (mean noise/signal ratio, in dB)."""
    ratios = []
    for ref, out in zip(reference, test):
        signal = float(np.sum(ref.astype(np.float64) ** 2))
        noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
        ratios.append(noise / max(signal, 1e-30))
    ratio = float(np.mean(ratios))
    return 99.0 if ratio <= 1e-10 else float(-10 * np.log10(ratio))


class HeadProbe:
    """Runs model variants on a few images and returns their raw head outputs."""

    def __init__(self, images: np.ndarray, heads: list[str], threads: int | None):
        self.images, self.heads, self.threads = images, heads, threads

    def session(self, model: onnx.ModelProto):
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in self.heads if t not in known)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(self, session, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Head outputs of an open session; `feeds` are extra graph inputs (such as scales)."""
        name = session.get_inputs()[0].name
        runs = [session.run(self.heads, {name: np.ascontiguousarray(self.images[i:i + 1], np.float32)} | (feeds or {}))
                for i in range(len(self.images))]
        return [np.concatenate([r[k] for r in runs]) for k in range(len(self.heads))]

    def outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        return self.run(self.session(model))
