"""`orinflow deploy`: a self-contained folder to copy to the Jetson and build, time and run the engine there."""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from ..errors import OrinflowError
from ..io import (check_replaceable_folder, copy_model, folder_tree, made_folder, private_folder, replace_folder,
                  umask_mode, write_json, writing)
from ..version import VERSION
from .traits import ModelTraits, infer_commands, model_traits
from .extras import device_extras, extras_readme
from .trtexec import BuildOptions, bench_commands, build_command

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SKIPPED_PACKAGES = ("demo",)  # not needed on the device (and holds the 2 MB demo checkpoint)
ENGINE = "model.engine"
RAW_MODEL = "model_raw.onnx"  # the model without the NMS deploy appended (ONNX Runtime cannot run EfficientNMS_TRT)
RECORD = "deploy.json"
# What the bundle's scripts write on the device (files of these names at the top; Python's __pycache__ folders
# anywhere): a bundle copied back may hold them, and --overwrite may replace them.
DEVICE_PRODUCTS = (ENGINE, "timing.cache", "layers.json", "profile.json", "__pycache__")


def check_bundle_slot(output: Path, overwrite: bool) -> None:
    """Before any work: an existing non-empty `output` is refused, or with `overwrite` replaced only when it
    is an orinflow bundle (io.check_replaceable_folder)."""
    if output.exists() and not output.is_dir():
        raise OrinflowError(f"-o {output} is a file; give a folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise OrinflowError(f"{output} exists and is not empty (use --overwrite to replace it)")
    if overwrite:
        check_replaceable_folder(output, "deploy", RECORD, DEVICE_PRODUCTS, legacy=package_files("orinflow"))

LAUNCHER = '''#!/usr/bin/env python3
"""Inference with the engine (or ONNX) of this bundle; `python3 infer.py --help`.

It runs the orinflow package bundled beside it ({version}), the same code as `orinflow evaluate`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orinflow.deploy.infer import main  # noqa: E402

sys.exit(main(default_backend={backend!r}))
'''


def write_bundle(model: Path, output: Path, options: BuildOptions, overwrite: bool = False,
                 traits: ModelTraits | None = None, raw: Path | None = None, nms: dict | None = None,
                 source: Path | None = None, high_precision: str | None = None, calib_cache: Path | None = None,
                 deepstream: bool = False, cache_check: dict | None = None) -> dict:
    """Write the bundle to `output` (built in a temporary folder and renamed, so never half-written).

    `nms`: `model` is the end-to-end graph deploy made from `source` (the user's model) with these NMS
    settings; `raw`, when given, is kept as model_raw.onnx (ONNX Runtime cannot run EfficientNMS_TRT).
    `high_precision`: what deploy did to the non-quantized layers (deploy/prepare.py), for the README and record.
    `calib_cache`: implicit INT8 (options.calib names it in the bundle), `cache_check` what deploy found of it
    (optimize/quantize/cache_check.py); `deepstream`: nvinfer's config and labels.
    """
    model, output = Path(model), Path(output)
    traits = traits or model_traits(model)
    options.check()
    build = build_command(traits, options, "model.onnx", ENGINE)
    bench = bench_commands(traits, options, ENGINE)
    check_bundle_slot(output, overwrite)
    with writing(output), private_folder(prefix=f".{output.name}.", dir=made_folder(output.parent)) as tmp:
        staging = tmp / "bundle"
        staging.mkdir()
        copy_model(model, staging / "model.onnx")
        if raw is not None:
            copy_model(raw, staging / RAW_MODEL)
        _script(staging / "build_engine.sh", "Build the TensorRT engine for this model (flags chosen from the model).",
                [build])
        _script(staging / "bench.sh", "Time the engine with trtexec (run build_engine.sh first).",
                list(bench.values()))
        write_runner_files(staging, "auto")
        name = Path(source or model).name
        if calib_cache is not None:
            shutil.copyfile(calib_cache, staging / options.calib)
        extras = device_extras(model, traits, options, nms, staging if deepstream else None)
        if cache_check is not None:
            extras["implicit"].update(cache_check)
        readme = bundle_readme(name, traits, options, build, bench, nms, high_precision) + extras_readme(extras)
        (staging / "README.md").write_text(readme)
        record = {"command": "deploy", "model": str(source or model), "bundle": str(output), "traits": traits.to_dict(),
                  **({"nms": nms} if nms else {}), **({"high_precision": high_precision} if high_precision else {}),
                  "options": vars(options), "build_engine": build, "bench": {str(b): c for b, c in bench.items()},
                  **extras, "orinflow": VERSION}
        finish_record(staging, record, list(DEVICE_PRODUCTS))
        replace_folder(staging, output)
    return record


def finish_record(staging: Path, record: dict, products: list[str]) -> None:
    """The bundle's record, listing what it holds: `files` at the top and `tree`, every file at any depth
    (what --overwrite may replace, io.check_replaceable_folder), and the `products` its scripts write."""
    record["files"] = sorted([RECORD, *(entry.name for entry in staging.iterdir())])
    record["tree"] = sorted([RECORD, *folder_tree(staging)])
    record["products"] = products
    write_json(staging / RECORD, record)


def _script(path: Path, comment: str, commands: list[list[str]]) -> None:
    write_script(path, comment, 'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
                 '"$TRTEXEC"', commands)


def write_script(path: Path, comment: str, tool_line: str, tool: str, commands: list[list[str]]) -> None:
    """An executable bash script running each command with its first word replaced by `tool` (set by
    `tool_line`, which lets the user point at their own copy), every argument shell-quoted."""
    lines = ["#!/usr/bin/env bash", f"# {comment}", "# Generated by `orinflow deploy`; see README.md for each flag.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', tool_line]
    for command in commands:
        lines.append(" \\\n    ".join([tool] + _flag_lines(command[1:])))
    path.write_text("\n".join(lines) + "\n")
    path.chmod(umask_mode(0o777))


def _flag_lines(args: list[str]) -> list[str]:
    """Shell-quoted arguments, a flag and the value after it on one line."""
    lines: list[str] = []
    for arg in args:
        if lines and lines[-1].startswith("-") and " " not in lines[-1] and not arg.startswith("-"):
            lines[-1] += " " + shlex.quote(arg)
        else:
            lines.append(shlex.quote(arg))
    return lines


def write_runner_files(staging: Path, backend: str) -> None:
    """infer.py (running `backend` by default) and the orinflow package it runs."""
    (staging / "infer.py").write_text(LAUNCHER.format(version=VERSION, backend=backend))
    (staging / "infer.py").chmod(umask_mode(0o777))
    copy_package(staging / "orinflow")


def copy_package(target: Path) -> None:
    for relative in _package_modules():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, destination)


def package_files(folder: str) -> list[str]:
    """The files copy_package writes into a bundle's `folder`, as relative POSIX paths."""
    return [f"{folder}/{relative.as_posix()}" for relative in _package_modules()]


def _package_modules() -> list[Path]:
    return [source.relative_to(PACKAGE_ROOT) for source in sorted(PACKAGE_ROOT.rglob("*.py"))
            if source.relative_to(PACKAGE_ROOT).parts[0] not in SKIPPED_PACKAGES]


FLAG_NOTES = {
    "--stronglyTyped": "use the types the Q/DQ graph states (TensorRT 10+; the implicit INT8 calibrator is "
                       "deprecated in 10.1)",
    "--int8": "allow INT8 kernels (explicit Q/DQ: exactly at the Q/DQ pairs; implicit: where a scale is known)",
    "--fp16": "allow FP16 kernels for the layers that are not INT8 (Orin runs FP16 at twice FP32)",
    "--calib": "implicit INT8: each activation's scale from this calibration cache, no calibration on the device",
    "--useDLACore": "build the layers DLA can run for this DLA core",
    "--allowGPUFallback": "layers DLA cannot run go to the GPU instead of failing the build",
    "--sparsity=enable": "use 2:4 sparse tensor-core kernels where the weights are 2:4 sparse",
    "--timingCacheFile": "reuse kernel timings across builds (faster rebuilds)",
    "--minShapes": "dynamic batch: the optimisation profile (min/opt/max)",
    "--profilingVerbosity=detailed": "keep layer names and precisions in the engine for the exports below",
    "--exportLayerInfo": "layers.json: every layer with its precision (check that the convolutions run INT8)",
    "--exportProfile": "profile.json: time per layer",
    "--saveEngine": "the serialized engine, specific to this device and TensorRT version",
    "--memPoolSize": "workspace memory TensorRT may use while choosing kernels",
}


def bundle_readme(name: str, traits: ModelTraits, options: BuildOptions, build: list[str],
                  bench: dict[int, list[str]], nms: dict | None = None, high_precision: str | None = None) -> str:
    what = describe_model(traits)
    if high_precision:
        what += ("; its non-quantized layers were converted to FP16 for this bundle (the model given keeps FP32 "
                 "there, to be evaluated on a CPU), so the engine runs no layer in FP32")
    if nms:
        what += (f"; end-to-end: decode and {'EfficientNMS_TRT' if nms['flavour'] == 'trt' else 'NonMaxSuppression'} "
                 f"inside the engine (pre-topk {nms['pre_topk']}, keep-topk {nms['keep_topk']}, IoU {nms['iou']}, "
                 f"score threshold {nms['conf']}), so no NMS runs on the CPU"
                 + ("; outputs num_dets, det_boxes, det_scores, det_classes (what DeepStream reads)"
                    if nms["flavour"] == "trt" else "; output (batch, keep-topk, 6): x1, y1, x2, y2, score, class"))
    trt = ("TensorRT 10 or newer (JetPack 6.x)" if options.trt == "10" else "TensorRT 8.5/8.6 (JetPack 5.x)")
    notes = [f"- `{flag}`: {note}" for flag, note in FLAG_NOTES.items()
             if any(arg == flag or arg.startswith(flag + "=") for arg in build)]
    timing = "\n".join(f"- batch {b}: `{shlex.join(c)}`" for b, c in bench.items())
    raw_note = (f"; `{RAW_MODEL}` is the model without the NMS part, which ONNX Runtime runs and infer.py uses "
                "where TensorRT is missing" if nms and nms["flavour"] == "trt" else "")
    raw_note += (". A score threshold in the engine caps what `infer.py --eval` can measure: deploy with "
                 "`--conf 0.001` for an mAP bundle" if nms else "")
    return f"""# orinflow deployment bundle: {name}

Made by orinflow {VERSION} from `{name}`: {what}.
Expects {trt}, as trtexec (`/usr/src/tensorrt/bin/trtexec` on JetPack, or set `TRTEXEC`), and for
`infer.py` the `tensorrt` Python package (JetPack ships it), PyTorch with CUDA (NVIDIA's Jetson
wheels), torchvision, OpenCV, NumPy, PyYAML, onnx and rich.

## Commands
```bash
./build_engine.sh          # model.onnx -> model.engine (+ layers.json, profile.json, timing.cache)
./bench.sh                 # trtexec timing of the engine
{infer_commands(traits, "on the device")}
```
`infer.py --backend onnxruntime --model model.onnx` runs the same code on ONNX Runtime (CPU){raw_note}.

## Build flags, read from the model
`{shlex.join(build)}`

{chr(10).join(notes)}

## Timing
{timing}

`bench.sh` reports trtexec's GPU compute time (median, percentiles) and throughput; run it with
the board in its deployment power mode (`sudo nvpmodel -q`, `sudo jetson_clocks` for stable clocks).
"""


def describe_model(traits: ModelTraits) -> str:
    parts = []
    if traits.explicit_quantization:
        parts.append(f"explicit Q/DQ ({'/'.join(t.upper() for t in traits.quant_types)})")
    else:
        parts.append("floating point (FP16 weights)" if traits.fp16_weights else "floating point (FP32)")
    if traits.sparse:
        parts.append(f"2:4 sparse ({traits.sparse_2to4_layers} of {traits.eligible_layers} eligible layers, "
                     f"{traits.sparse_flop_share:.0%} of conv FLOPs)")
    batch = "dynamic batch" if traits.dynamic_batch else f"batch {traits.input_shape[0]}"
    parts.append(f"input {traits.input_name} {batch} x {'x'.join(map(str, traits.input_shape[1:]))}")
    return ", ".join(parts)
