"""trtexec command lines chosen from what the model is (see traits.py), not from flags users must remember."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OrinflowError
from .traits import ModelTraits

TRT_VERSIONS = ("10", "8")  # TensorRT 10+ (JetPack 6.x) or 8.x (JetPack 5.x)


@dataclass
class BuildOptions:
    trt: str = "10"
    fp16: bool = True  # floating-point models: let TensorRT pick FP16 kernels (Orin runs FP16 at twice FP32)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace_mib: int | None = None
    calib: str | None = None  # implicit INT8: the calibration cache (a file name in the bundle)
    dla: int | None = None  # the DLA core to build for (Orin NX / AGX Orin), GPU fallback allowed

    def check(self) -> None:
        if self.trt not in TRT_VERSIONS:
            raise OrinflowError(f"--trt {self.trt}: choose 10 (TensorRT 10+, JetPack 6) or 8 (JetPack 5)")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise OrinflowError("batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch")
        if self.dla is not None and self.dla not in (0, 1):
            raise OrinflowError(f"--dla {self.dla}: Orin has DLA cores 0 and 1")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise OrinflowError(f"--workspace-mib {self.workspace_mib}: give the MiB TensorRT may use, 1 or more (leave "
                                "it out for TensorRT's default)")


def refuse_dla_on_qdq(dla: int | None, explicit_quantization: bool) -> None:
    """DLA runs implicit INT8 or FP16, never a Q/DQ graph."""
    if dla is not None and explicit_quantization:
        raise OrinflowError("DLA builds take implicit INT8 (--implicit with a calibration cache) or FP16: deploy the "
                            "FP32 export")


def precision_flags(traits: ModelTraits, options: BuildOptions) -> list[str]:
    """How TensorRT should honour the model's own precision."""
    if options.calib:
        if traits.explicit_quantization:
            raise OrinflowError("implicit INT8 builds a floating-point ONNX with a calibration cache; this model has "
                                "Q/DQ nodes: deploy its FP32 export, with `orinflow calib-cache --from-qdq` for the "
                                "cache")
        # TensorRT 8 and 10 (deprecated in 10, still read); FP16 for what stays in float, unless --no-fp16
        return ["--int8", *(["--fp16"] if options.fp16 else []), f"--calib={options.calib}"]
    refuse_dla_on_qdq(options.dla, traits.explicit_quantization)
    if traits.explicit_quantization:
        if "fp8" in traits.quant_types or "int4" in traits.quant_types:
            if options.trt != "10":
                raise OrinflowError(f"{'/'.join(traits.quant_types).upper()} Q/DQ needs TensorRT 10 (--trt 10)")
        if options.trt == "10":
            return ["--stronglyTyped"]  # types come from the Q/DQ graph; implicit INT8 is deprecated in 10.1
        return ["--int8", "--fp16"]  # TensorRT 8: explicit Q/DQ honoured with INT8 on, FP16 for the rest
    if traits.fp16_weights:
        return ["--stronglyTyped"] if options.trt == "10" else ["--fp16"]
    return ["--fp16"] if options.fp16 else []


def shape_spec(traits: ModelTraits, batch: int) -> str:
    """trtexec's `name:BxCxHxW`. Its parser splits a list of these at ',' and each at ':', so a name holding
    either (or a quote, a space or a control character) would be read as other tensors' shapes: refused."""
    from ..formats import trtexec_input

    return f"{trtexec_input(traits.input_name)}:{batch}x{'x'.join(str(d) for d in traits.chw())}"


def shape_flags(traits: ModelTraits, options: BuildOptions) -> list[str]:
    one_batch = options.min_batch == options.opt_batch == options.max_batch
    if traits.dynamic_batch and options.dla is not None and not one_batch:
        raise OrinflowError("DLA has no dynamic shapes: give one batch (--min-batch = --opt-batch = --max-batch)")
    if not traits.dynamic_batch:
        if options.max_batch != 1 or options.opt_batch != 1:
            raise OrinflowError(f"the model has a fixed batch of {traits.input_shape[0]}; export it with "
                                "--dynamic for other batch sizes")
        return []
    return [f"--minShapes={shape_spec(traits, options.min_batch)}",
            f"--optShapes={shape_spec(traits, options.opt_batch)}",
            f"--maxShapes={shape_spec(traits, options.max_batch)}"]


def build_command(traits: ModelTraits, options: BuildOptions, onnx_name: str, engine_name: str) -> list[str]:
    options.check()
    command = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}", "--timingCacheFile=timing.cache",
               *precision_flags(traits, options)]
    if traits.sparse:
        command.append("--sparsity=enable")
    if options.dla is not None:
        command += [f"--useDLACore={options.dla}", "--allowGPUFallback"]
    command += shape_flags(traits, options)
    if options.workspace_mib:
        command.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    command += ["--profilingVerbosity=detailed", "--exportLayerInfo=layers.json", "--exportProfile=profile.json"]
    return command


def bench_commands(traits: ModelTraits, options: BuildOptions, engine_name: str) -> dict[int, list[str]]:
    """Timing runs of the built engine: batch 1 and, for dynamic models, the optimisation batch."""
    batches = sorted({1, options.opt_batch}) if traits.dynamic_batch else [traits.input_shape[0]]
    commands = {}
    for batch in batches:
        command = ["trtexec", f"--loadEngine={engine_name}", "--warmUp=500", "--duration=10", "--useSpinWait"]
        if traits.dynamic_batch:
            command.append(f"--shapes={shape_spec(traits, batch)}")
        commands[batch] = command
    return commands
