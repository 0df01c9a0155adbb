"""OpenVINO (CPU) as a Runner: the same ONNX file, FP32, FP16 or Q/DQ, on x86 CPUs.

OpenVINO reads a Q/DQ pair as a FakeQuantize and fuses it into its INT8 kernels (VNNI/AMX where the
CPU has them), so the TensorRT-target model orinflow ships to the Jetson also runs INT8 here.
Inference precision is pinned to f32: on a CPU with bfloat16 (AMX), OpenVINO would otherwise run the
float layers in bf16 and its figures would no longer be the ONNX model's.
INT8 kernels need VNNI or AMX to be exact. Without them (AVX2, AVX-512F: older Intel, AMD before Zen 4)
oneDNN sums u8 x s8 pairs in 16 bits, which saturates: measured on a 2-core AMD EPYC (AVX2), the
TensorRT-target yolov5n scored mAP50-95 0.002 instead of ONNX Runtime's 0.329 on coco128. There, int8
"auto" folds the weights' Q/DQ into float weights (optimize/common/graph.fold_weight_qdq): the same function,
run by float kernels with the activations still quantized, at float speed. "kernels" forces the integer
kernels (benchmarks/runtimes.py times both), "emulate" always folds.
A graph with a free batch is compiled once per batch size met (a static shape runs OpenVINO's fastest
kernels); a graph with a fixed batch runs image by image for other batch sizes, as on ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError

INT8_MODES = ("auto", "kernels", "emulate")
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
                 int8: str = "auto"):
        """`extra_outputs`: tensor names also returned, after the graph's own outputs (orinflow compare).
        `int8`: auto, kernels or emulate (the module's docstring)."""
        from .cpu import default_threads

        path = Path(path)
        refuse_engine(path)
        if int8 not in INT8_MODES:
            raise OrinflowError(f"unknown OpenVINO int8 mode {int8!r}; choose one of {', '.join(INT8_MODES)}")
        ov = import_openvino()
        self.threads = threads or default_threads()
        self.core = ov.Core()
        self.int8 = int8_mode(path, int8)
        try:
            self.model = self._read(path)
        except Exception as e:
            if "EfficientNMS_TRT" in str(e):
                raise OrinflowError(f"{path} ends in TensorRT's EfficientNMS_TRT plugin, which only TensorRT runs: "
                                    "give the model without it (deploy keeps it as model_raw.onnx), or export with "
                                    "--nms onnx") from e
            raise OrinflowError(f"OpenVINO cannot read {path}: {_first_line(e)}") from e
        self.path = path
        self.final = len(self.model.outputs)
        if extra_outputs:
            self.model.add_outputs(list(extra_outputs))
        self.output_names = [output.any_name for output in self.model.outputs]
        shape = self.model.inputs[0].get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self.input_shape = shape
        self._compiled: dict[tuple, object] = {}  # input shape -> infer request

    def _read(self, path: Path):
        if self.int8 != "emulate":
            return self.core.read_model(str(path))
        import onnx

        from ..io import private_folder
        from ..optimize.common.graph import fold_weight_qdq

        graph = onnx.load(str(path))
        fold_weight_qdq(graph)
        with private_folder() as folder:
            onnx.save(graph, str(folder / path.name), save_as_external_data=graph.ByteSize() > 2 ** 31 - 2 ** 20)
            return self.core.read_model(str(folder / path.name))

    def describe(self) -> dict:
        """What a record says about this run (its INT8 execution)."""
        return {"version": openvino_version(), "int8": self.int8}

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


def int8_mode(path: Path, asked: str) -> str:
    """kernels or emulate for a Q/DQ graph ("none" without integer Q/DQ); auto: kernels where they are exact."""
    import onnx

    from .cpu import exact_int8_dot_products

    graph = onnx.load(str(path), load_external_data=False)
    if not any(node.op_type == "DequantizeLinear" for node in graph.graph.node):
        return "none"
    if asked == "auto":
        return "kernels" if exact_int8_dot_products() else "emulate"
    return asked


def tensor_names(path: str | Path) -> set[str]:
    """The tensor names OpenVINO keeps when it reads `path` (those compare can ask it for)."""
    model = import_openvino().Core().read_model(str(path))
    return {name for op in model.get_ops() for output in op.outputs() for name in output.get_names()}


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
