"""One Runner interface over every runtime: a float32 NCHW batch in, the graph's outputs out."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import OrinflowError
from ..models import ModelAdapter, OnnxModel
from .cpu import default_threads
from .onnxruntime import OrtRunner  # noqa: F401  (the plain runner; make_runner returns a checked one)

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


def check_runtime(paths, runtime: str, int8_kernels: str = "auto") -> None:
    """Before any work: the runtime exists and can run each of `paths` (an engine is TensorRT's alone), and a
    --int8-kernels other than auto has an integer path to govern (ONNX Runtime or OpenVINO on an ONNX)."""
    from .trust import INTEGER_RUNTIMES, check_int8_kernels

    if runtime not in RUNTIMES:
        raise OrinflowError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    check_int8_kernels(int8_kernels)
    onnx_files = [p for p in paths if Path(p).suffix.lower() == ".onnx"]
    if int8_kernels != "auto" and (runtime not in ("auto", *INTEGER_RUNTIMES) or not onnx_files):
        runs = "PyTorch or TensorRT (no ONNX model given)" if runtime == "auto" else runtime
        raise OrinflowError(f"--int8-kernels {int8_kernels} chooses how ONNX Runtime or OpenVINO run a Q/DQ ONNX; "
                            f"{runs} has no integer path to choose")
    if runtime != "openvino":
        return
    from .openvino import import_openvino, refuse_engine

    for path in paths:
        refuse_engine(path)
    import_openvino()


def make_runner(model: ModelAdapter | OnnxModel, threads: int | None = None, runtime: str = "auto",
                max_batch: int = 1, int8_kernels: str = "auto") -> Runner:
    """PyTorch for a PyTorch model; ONNX Runtime (CPU), OpenVINO (CPU) or TensorRT for an ONNX file.
    `int8_kernels` (auto, integer, exact): how ONNX Runtime and OpenVINO run a Q/DQ model (runtime/trust.py)."""
    if runtime not in RUNTIMES:
        raise OrinflowError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if isinstance(model, OnnxModel):
        if runtime == "torch":
            raise OrinflowError(f"{model.path} is ONNX: run it with --runtime onnxruntime, openvino or tensorrt")
        if runtime == "tensorrt":
            from .tensorrt import TrtRunner

            return TrtRunner(model.path, max_batch=max_batch)
        from .checked import checked_runner

        return checked_runner(model.path, "openvino" if runtime == "openvino" else "onnxruntime", threads,
                              int8_kernels)
    if runtime not in ("auto", "torch"):
        raise OrinflowError(f"--runtime {runtime} runs ONNX models: export the PyTorch model first (orinflow export)")
    return TorchRunner(model, threads)
