"""One Runner interface over every runtime: a float32 NCHW batch in, the graph's outputs out."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import OrinflowError
from ..models import ModelAdapter, OnnxModel
from .cpu import default_threads

RUNTIMES = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")


class Runner(Protocol):
    name: str
    threads: int

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


class TorchRunner:
    name = "torch"

    def __init__(self, adapter: ModelAdapter, threads: int | None = None):
        import torch

        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)
        self.module = adapter.export_module().eval()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        self.threads = threads or default_threads()
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            if "EfficientNMS_TRT" in str(e):
                raise OrinflowError(f"{path} ends in TensorRT's EfficientNMS_TRT plugin, which only TensorRT runs: "
                                    "use --runtime tensorrt on a GPU, or export with --nms onnx for ONNX Runtime") from e
            raise OrinflowError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0][:200]}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.static_batch = self.session.get_inputs()[0].shape[0]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if isinstance(self.static_batch, int) and batch.shape[0] != self.static_batch:
            # A static-batch graph: run image by image and stack, so any batch size works.
            parts = [self.session.run(None, {self.input_name: batch[i:i + 1]}) for i in range(batch.shape[0])]
            return [np.concatenate(outs) for outs in zip(*parts)]
        return self.session.run(None, {self.input_name: batch})


def check_runtime(paths, runtime: str) -> None:
    """Before any work: the runtime exists and can run each of `paths` (an engine is TensorRT's alone)."""
    if runtime not in RUNTIMES:
        raise OrinflowError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime != "openvino":
        return
    from .openvino import import_openvino, refuse_engine

    for path in paths:
        refuse_engine(path)
    import_openvino()


def make_runner(model: ModelAdapter | OnnxModel, threads: int | None = None, runtime: str = "auto",
                max_batch: int = 1) -> Runner:
    """PyTorch for a PyTorch model; ONNX Runtime (CPU), OpenVINO (CPU) or TensorRT for an ONNX file."""
    if runtime not in RUNTIMES:
        raise OrinflowError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if isinstance(model, OnnxModel):
        if runtime == "torch":
            raise OrinflowError(f"{model.path} is ONNX: run it with --runtime onnxruntime, openvino or tensorrt")
        if runtime == "openvino":
            from .openvino import OpenVinoRunner

            return OpenVinoRunner(model.path, threads)
        if runtime == "tensorrt":
            from .tensorrt import TrtRunner

            return TrtRunner(model.path, max_batch=max_batch)
        return OrtRunner(model.path, threads)
    if runtime not in ("auto", "torch"):
        raise OrinflowError(f"--runtime {runtime} runs ONNX models: export the PyTorch model first (orinflow export)")
    return TorchRunner(model, threads)
