"""ONNX Runtime's CPU provider as a Runner, in one of three forms of the same graph.

- "optimized": the default session. Where a Q/DQ graph has node units ONNX Runtime fuses (a node between
  DequantizeLinear inputs and QuantizeLinear outputs: QLinearConv, QLinearAdd, ...), they run on integer
  kernels, whose 16-bit sums can saturate on CPUs without VNNI;
- "exact": the same session with its Q/DQ fusions off: float kernels, every Q/DQ computed as written;
- "reference": graph optimizations off: the graph's operators one by one, as ONNX defines them.
Which form a model runs in for a figure is decided by measurement (runtime/trust.py, runtime/checked.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError
from .cpu import default_threads

FORMS = ("optimized", "exact", "reference")


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, path, threads: int | None = None, form: str = "optimized"):
        if form not in FORMS:
            raise OrinflowError(f"unknown ONNX Runtime form {form!r}; choose one of {', '.join(FORMS)}")
        self.threads = threads or default_threads()
        self.path, self.form = path, form
        self.session = self._session()
        self.input_name = self.session.get_inputs()[0].name
        self.static_batch = self.session.get_inputs()[0].shape[0]

    def _session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if self.form == "reference":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif self.form == "exact":
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            if "EfficientNMS_TRT" in str(e):
                raise OrinflowError(f"{self.path} ends in TensorRT's EfficientNMS_TRT plugin, which only TensorRT "
                                    "runs: use --runtime tensorrt on a GPU, or export with --nms onnx for ONNX "
                                    "Runtime") from e
            raise OrinflowError(f"ONNX Runtime cannot load {self.path}: "
                                f"{str(e).strip().splitlines()[0][:200]}") from e

    def with_form(self, form: str) -> "OrtRunner":
        return self if form == self.form else OrtRunner(self.path, self.threads, form)

    def integer_forms(self) -> dict:
        """The forms that may run integer kernels, in order of preference (runtime/trust.py measures them): name ->
        a function making its runner (only a form that is measured is built)."""
        return {"optimized": lambda: self.with_form("optimized")}

    def describe(self) -> dict:
        return {"version": ort_version(), "form": self.form}

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if isinstance(self.static_batch, int) and batch.shape[0] != self.static_batch:
            # A static-batch graph: run image by image and stack, so any batch size works.
            parts = [self.session.run(None, {self.input_name: batch[i:i + 1]}) for i in range(batch.shape[0])]
            return [np.concatenate(outs) for outs in zip(*parts)]
        return self.session.run(None, {self.input_name: batch})


def has_integer_units(path) -> bool:
    """Whether ONNX Runtime can fuse any of the graph's Q/DQ node units into integer kernels."""
    import onnx

    from ..optimize.common.graph import ort_integer_units

    return ort_integer_units(onnx.load(str(Path(path)), load_external_data=False)) > 0


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
