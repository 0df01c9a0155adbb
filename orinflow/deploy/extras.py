"""What a bundle holds beyond the engine build: implicit INT8 with a calibration cache, a DLA core, and
DeepStream's nvinfer configuration; their record entries and README sections."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..models.onnx_model import read_processing
from ..optimize.quantize.calib_cache import activation_tensors
from .deepstream import dla_fallback_ops, infer_config, labels_text
from .traits import ModelTraits
from .trtexec import BuildOptions


def device_extras(model: Path, traits: ModelTraits, options: BuildOptions, nms: dict | None,
                  deepstream_folder: Path | None) -> dict:
    """The record entries for the implicit build, DLA and DeepStream; writes nvinfer's files into the folder."""
    extras: dict = {}
    graph = onnx.load(str(model)) if options.calib or options.dla is not None or deepstream_folder else None
    if options.calib:
        extras["implicit"] = {"calib_cache": options.calib}
    if options.dla is not None:
        gpu_ops = dla_fallback_ops(graph, set(activation_tensors(graph)))
        extras["dla"] = {"core": options.dla, "expected_gpu_ops": gpu_ops}
    if deepstream_folder is not None:
        processing = read_processing(graph)
        mode = "int8" if options.calib or traits.explicit_quantization else "fp16" if options.fp16 else "fp32"
        outputs = [o.name for o in graph.graph.output]
        text, notes = infer_config(processing, mode, options.calib, nms, outputs, options.opt_batch)
        labels = labels_text(processing)
        (deepstream_folder / "config_infer_primary.txt").write_text(text)
        (deepstream_folder / "labels.txt").write_text(labels)
        extras["deepstream"] = {"config": "config_infer_primary.txt", "labels": "labels.txt", "notes": notes}
    return extras


def _cache_line(found: dict) -> str:
    """What deploy found of the cache (optimize/quantize/cache_check.py), in one sentence."""
    from ..optimize.quantize.cache_emulation import describe

    if "coverage" not in found:
        return ""
    line = f"It covers {found['covered']} of the model's {found['activations']} activations."
    emulated = found["emulated"]
    if emulated.get("kind") in ("metric", "agreement"):
        line += f" Emulated by calib-cache on {emulated['images']} images: {describe(emulated)}."
    return line


def extras_readme(extras: dict) -> str:
    sections = []
    if "implicit" in extras:
        sections.append(f"""## Implicit INT8
`model.onnx` is the floating-point graph; `{extras['implicit']['calib_cache']}` holds the scale of every
activation tensor (made by `orinflow calib-cache` on your calibration data), which trtexec reads with
`--calib` instead of calibrating on the device. {_cache_line(extras['implicit'])} Implicit quantization is deprecated in TensorRT 10 but
still read there, and it is the way INT8 reaches DLA and DeepStream's `int8-calib-file`. TensorRT may run
a layer in FP16 where that is faster; `layers.json` says which precision each layer got.
""")
    if "dla" in extras:
        ops = extras["dla"]["expected_gpu_ops"]
        listed = ", ".join(f"{op} ({count})" for op, count in ops.items()) or "none"
        sections.append(f"""## DLA core {extras['dla']['core']}
`--useDLACore={extras['dla']['core']} --allowGPUFallback`: layers DLA cannot run go to the GPU. Read from the
graph against TensorRT's list of DLA layers, these ops are expected on the GPU: {listed}. The build log
says what actually fell back (`grep "Unsupported on DLA"`); per-layer limits (sizes, axes, modes) can move
more layers there. Not measured without a device.
""")
    if "deepstream" in extras:
        notes = "".join(f"\n- {note}" for note in extras["deepstream"]["notes"].values())
        sections.append(f"""## DeepStream
`config_infer_primary.txt` (for `nvinfer`) and `labels.txt`: preprocessing, input size, classes, precision
and thresholds read from the model. Build the engine with `./build_engine.sh` first: the config loads
`model.engine`, and nvinfer builds its own from `model.onnx` when the engine is missing.{notes}
""")
    return "".join("\n" + section for section in sections)
