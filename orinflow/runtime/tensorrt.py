"""TensorRT as a Runner, when the `tensorrt` Python package imports (a Jetson, or a machine with an NVIDIA GPU).

An ONNX model is built into an engine with the flags `orinflow deploy` would write (the
model's own precision: strongly typed for Q/DQ, FP16 otherwise; 2:4 sparse weights enabled
when present) and cached in workspace/cache/engines under the model's content hash (never beside
the user's model, where it could meet a file of theirs); a `.engine`/`.plan` file is loaded as it is. Buffers are
torch CUDA tensors, so no pycuda is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise OrinflowError("the TensorRT runtime needs the `tensorrt` Python package, which does not import here: "
                            "it comes with JetPack on a Jetson, or `pip install 'orinflow[tensorrt]'` on a machine "
                            "with an NVIDIA GPU") from None
    import torch

    if not torch.cuda.is_available():
        raise OrinflowError("tensorrt imports but torch sees no CUDA device: the TensorRT runtime needs a GPU")
    return tensorrt


class TrtRunner:
    name = "tensorrt"
    threads = 1

    def __init__(self, path: str | Path, max_batch: int = 1, fp16: bool = True):
        self.trt = import_tensorrt()
        path = Path(path)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        plan = path.read_bytes() if path.suffix in ENGINE_SUFFIXES else self._cached_build(path, max_batch, fp16)
        self.engine = self.trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise OrinflowError(f"TensorRT cannot load the engine from {path} (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.input_name = next(n for n in names if is_input[n])
        self.output_names = [n for n in names if not is_input[n]]
        self.static_batch = self.engine.get_tensor_shape(self.input_name)[0]  # -1 when dynamic

    def _cached_build(self, onnx_path: Path, max_batch: int, fp16: bool) -> bytes:
        import hashlib

        from ..config import workspace

        key = hashlib.sha1(onnx_path.read_bytes()).hexdigest()[:16]
        engine = (workspace() / "cache" / "engines" /
                  f"{onnx_path.stem}_{key}_b{max_batch}{'_fp16' if fp16 else ''}_trt{self.trt.__version__}.engine")
        if engine.is_file():
            return engine.read_bytes()
        plan = build_engine(self.trt, self.logger, onnx_path, max_batch, fp16)
        from ..io import atomic_path

        with atomic_path(engine) as tmp:
            tmp.write_bytes(plan)
        return plan

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.static_batch > 0 and batch.shape[0] != self.static_batch:  # fixed-batch engine: image by image
            parts = [self._run(batch[i:i + 1]) for i in range(batch.shape[0])]
            return [np.concatenate(outs) for outs in zip(*parts)]
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        images = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        images = images.to(_torch_dtype(self.trt, self.engine.get_tensor_dtype(self.input_name)))
        self.context.set_input_shape(self.input_name, tuple(images.shape))
        self.context.set_tensor_address(self.input_name, images.data_ptr())
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise OrinflowError("TensorRT inference failed")
        stream.synchronize()
        return [o.float().cpu().numpy() for o in outputs]


def build_engine(trt, logger, onnx_path: Path, max_batch: int, fp16: bool) -> bytes:
    """Parse the ONNX and build with the precision and sparsity the model itself asks for."""
    from ..deploy.traits import model_traits

    traits = model_traits(onnx_path)
    builder = trt.Builder(logger)
    strongly_typed = traits.explicit_quantization or traits.fp16_weights
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OrinflowError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if traits.sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if traits.dynamic_batch:
        profile = builder.create_optimization_profile()
        chw = tuple(traits.chw())
        profile.set_shape(traits.input_name, (1, *chw), (max_batch, *chw), (max_batch, *chw))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise OrinflowError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    return bytes(plan)


def _torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]
