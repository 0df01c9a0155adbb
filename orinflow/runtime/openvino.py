"""OpenVINO (CPU) as a Runner: the same ONNX file, FP32, FP16 or Q/DQ, on x86 CPUs.

OpenVINO reads a Q/DQ pair as a FakeQuantize and fuses it into its integer kernels, so the TensorRT-target
model orinflow ships to the Jetson also runs INT8 here. Inference precision is pinned to f32: on a CPU with
bfloat16 (AMX), OpenVINO would otherwise run the float layers in bf16 and its figures would no longer be the
ONNX model's.
Whether the integer kernels compute the model's function depends on the CPU (16-bit sums saturate without
VNNI or AMX) and on OpenVINO itself (2026.4 computes a signed activation quantizer after a Concat with a step of
1.0 on AVX-512 VNNI CPUs without AMX). So a Q/DQ model runs on them for a figure only after runtime/trust.py
has measured them to agree with the exact function on this machine (runtime/checked.py). Its forms:
- "as written": the integer kernels on the graph as it is;
- "unsigned activations": the same, with signed activation quantizers re-expressed as unsigned with zero point
  128 (optimize/common/graph.unsigned_activations: the same function, another path through OpenVINO);
- "exact": the weights' Q/DQ folded into float weights (optimize/common/graph.fold_weight_qdq), the
  activations still quantized: float kernels, the model's function, float speed ("INT8 emulated").
A graph with a free batch is compiled once per batch size met (a static shape runs OpenVINO's fastest
kernels); a graph with a fixed batch runs image by image for other batch sizes, as on ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError

FORMS = ("as written", "unsigned activations", "exact")
INSTALL_HINT = "pip install openvino (it is one of orinflow's dependencies: reinstall orinflow to get it back)"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise OrinflowError(f"--runtime openvino needs the `openvino` package, which does not import here: "
                            f"{INSTALL_HINT}") from None
    return openvino


def refuse_engine(path: str | Path) -> None:
    from .tensorrt import ENGINE_SUFFIXES

    if Path(path).suffix.lower() in ENGINE_SUFFIXES:
        raise OrinflowError(f"{path} is a TensorRT engine, which only TensorRT runs: give --runtime openvino the "
                            "ONNX model it was built from")


def openvino_version() -> str:
    return import_openvino().__version__.split("-")[0]


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, extra_outputs: list[str] | tuple = (),
                 form: str = "as written"):
        """`extra_outputs`: tensor names also returned, after the graph's own outputs (orinflow compare).
        `form`: as written, unsigned activations or exact (the module's docstring; a graph without integer
        Q/DQ is read as written whatever the form)."""
        from .cpu import default_threads

        path = Path(path)
        refuse_engine(path)
        if form not in FORMS:
            raise OrinflowError(f"unknown OpenVINO form {form!r}; choose one of {', '.join(FORMS)}")
        ov = import_openvino()
        self.path, self.extra_outputs = path, list(extra_outputs)
        self.threads = threads or default_threads()
        self.core = ov.Core()
        self.quantized = quantized(path)
        self.form = form if self.quantized else "as written"
        self.model = self._load()
        self.output_names = [output.any_name for output in self.model.outputs]
        shape = self.model.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self.input_shape = shape
        self._compiled: dict[tuple, object] = {}  # input shape -> infer request

    def _load(self):
        """The OpenVINO model of this form, with the extra outputs asked for."""
        try:
            model = self._read(self.form)
        except Exception as e:
            if "EfficientNMS_TRT" in str(e):
                raise OrinflowError(f"{self.path} ends in TensorRT's EfficientNMS_TRT plugin, which only TensorRT "
                                    "runs: give the model without it (deploy keeps it as model_raw.onnx), or export "
                                    "with --nms onnx") from e
            raise OrinflowError(f"OpenVINO cannot read {self.path}: {_first_line(e)}") from e
        self.final = len(model.outputs)
        if self.extra_outputs:
            model.add_outputs(self.extra_outputs)
        return model

    def _read(self, form: str):
        if form == "as written":
            return self.core.read_model(str(self.path))
        import onnx

        from ..io import private_folder
        from ..optimize.common.graph import fold_weight_qdq, unsigned_activations

        graph = onnx.load(str(self.path))
        (fold_weight_qdq if form == "exact" else unsigned_activations)(graph)
        with private_folder() as folder:
            onnx.save(graph, str(folder / self.path.name), save_as_external_data=graph.ByteSize() > 2 ** 31 - 2 ** 20)
            return self.core.read_model(str(folder / self.path.name))

    def with_form(self, form: str) -> "OpenVinoRunner":
        return self if form == self.form else OpenVinoRunner(self.path, self.threads, self.extra_outputs, form)

    def integer_forms(self) -> dict:
        """The forms that may run integer kernels, in order of preference (runtime/trust.py measures them): as
        written, then unsigned where the graph has signed activation quantizers. Name -> a function making its
        runner (only a form that is measured is built)."""
        import onnx

        from ..optimize.common.graph import unsigned_activations

        forms = {"as written": lambda: self.with_form("as written")}
        if unsigned_activations(onnx.load(str(self.path), load_external_data=False)):
            forms["unsigned activations"] = lambda: self.with_form("unsigned activations")
        return forms

    def describe(self) -> dict:
        return {"version": openvino_version(), "form": self.form if self.quantized else None}

    def config(self) -> dict:
        return {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32"}

    def _request(self, shape: tuple[int, ...]):
        """One compiled model per input shape: a free batch is fixed to the batch given."""
        if shape not in self._compiled:
            model = self.model
            if not self.input_shape.is_static:
                model = self.model.clone()
                model.reshape({model.inputs[0].any_name: list(shape)})
            try:
                compiled = self.core.compile_model(model, "CPU", self.config())
            except Exception as e:
                raise OrinflowError(f"OpenVINO cannot compile {self.path}: {_first_line(e)}") from e
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.static_batch is not None and batch.shape[0] != self.static_batch:
            parts = [self.run(batch[i:i + 1]) for i in range(batch.shape[0])]
            return [np.concatenate(outs) for outs in zip(*parts)]
        compiled, request = self._request(tuple(batch.shape))
        results = request.infer({0: batch})
        # The request reuses its output buffers on the next call: copy them out.
        return [np.array(results[output], copy=True) for output in compiled.outputs]


def quantized(path: Path) -> bool:
    """Whether the graph has 8-bit Q/DQ, which OpenVINO may run on integer kernels."""
    import onnx

    from ..optimize.common.graph import has_integer_qdq

    return has_integer_qdq(onnx.load(str(path), load_external_data=False))


def tensor_names(path: str | Path) -> set[str]:
    """The tensor names OpenVINO keeps when it reads `path` (those compare can ask it for)."""
    model = import_openvino().Core().read_model(str(path))
    return {name for op in model.get_ops() for output in op.outputs() for name in output.get_names()}


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
