"""`orinflow deploy --target openvino`: an x86 bundle, the same ONNX run by OpenVINO on the CPU.

The bundle holds the model (without TensorRT's EfficientNMS_TRT, which OpenVINO cannot run: orinflow's
own NMS in infer.py takes its place), infer.py running the bundled orinflow on OpenVINO, bench.sh timing
it with OpenVINO's benchmark_app (installed with the openvino wheel), a README and deploy.json.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import OrinflowError
from ..export.nms import detach_nms
from ..io import copy_model, made_folder, private_folder, replace_folder, writing
from ..runtime.openvino import OpenVinoRunner
from ..version import VERSION
from .bundle import check_bundle_slot, finish_record, write_runner_files, write_script
from .traits import ModelTraits, infer_commands, model_traits

BENCH_SECONDS = 15


def bench_commands(traits: ModelTraits, batch: int, model: str = "model.onnx") -> dict[int, list[str]]:
    """benchmark_app per batch: latency at batch 1; a free-batch graph also throughput at `batch`. The shape is
    given without the input's name (the model has one input), so no name can be misread as a shape."""
    from ..formats import benchmark_app_shape

    common = ["-m", model, "-d", "CPU", "-infer_precision", "f32", "-t", str(BENCH_SECONDS)]
    shape = {b: benchmark_app_shape([traits.input_name], [b, *traits.chw()]) for b in (1, batch)}
    commands = {1: ["benchmark_app", *common, "-hint", "latency", "-shape", shape[1]]}
    if traits.dynamic_batch and batch > 1:
        commands[batch] = ["benchmark_app", *common, "-hint", "throughput", "-shape", shape[batch]]
    return commands


def write_openvino_bundle(model: Path, output: Path, batch: int, overwrite: bool = False) -> dict:
    """Write the x86 bundle for `model` into `output` (staged beside it and renamed, never half-written)."""
    model, output = Path(model), Path(output)
    check_bundle_slot(output, overwrite)
    with writing(output), private_folder(prefix=f".{output.name}.", dir=made_folder(output.parent)) as tmp:
        staging = tmp / "bundle"
        staging.mkdir()
        removed_nms = _copy_without_trt_nms(model, staging / "model.onnx")
        OpenVinoRunner(staging / "model.onnx", threads=1)  # an op OpenVINO lacks is named here, not on the target
        traits = model_traits(staging / "model.onnx")
        bench = bench_commands(traits, batch)
        write_script(staging / "bench.sh", "Time the model with OpenVINO's benchmark_app (pip install openvino).",
                     'BENCHMARK_APP="${BENCHMARK_APP:-benchmark_app}"', '"$BENCHMARK_APP"', list(bench.values()))
        write_runner_files(staging, "openvino")
        (staging / "README.md").write_text(bundle_readme(model.name, traits, bench, removed_nms))
        record = {"command": "deploy", "target": "openvino", "model": str(model), "bundle": str(output),
                  "traits": traits.to_dict(), "bench": {str(b): c for b, c in bench.items()},
                  "nms_removed": removed_nms, "orinflow": VERSION}
        finish_record(staging, record, ["__pycache__"])
        replace_folder(staging, output)
    return record


def _copy_without_trt_nms(model: Path, target: Path) -> bool:
    """Copy the model; an end-to-end graph ending in EfficientNMS_TRT loses that part (True)."""
    graph = onnx.load(str(model), load_external_data=False)
    if not any(node.op_type == "EfficientNMS_TRT" for node in graph.graph.node):
        copy_model(model, target)
        return False
    raw, spec = detach_nms(onnx.load(str(model)))
    if spec is None:
        raise OrinflowError(f"{model} ends in TensorRT's EfficientNMS_TRT plugin, which OpenVINO cannot run, and was "
                            "not made by orinflow (no raw output recorded): give the model without it")
    onnx.save(raw, str(target))
    return True


def bundle_readme(name: str, traits: ModelTraits, bench: dict[int, list[str]], removed_nms: bool) -> str:
    import shlex

    from .bundle import describe_model

    nms = ("\nThe model's EfficientNMS_TRT part (TensorRT only) was removed: infer.py runs orinflow's NMS on "
           "the raw head output, as `orinflow evaluate` does.\n" if removed_nms else "")
    timing = "\n".join(f"- batch {b}: `{shlex.join(c)}`" for b, c in bench.items())
    return f"""# orinflow x86 bundle (OpenVINO): {name}

Made by orinflow {VERSION} from `{name}`: {describe_model(traits)}.
Runs on an x86 CPU with OpenVINO (`pip install openvino`, which also installs `benchmark_app`); `infer.py`
also needs PyTorch (CPU), torchvision, OpenCV, NumPy, PyYAML, onnx and rich.
{nms}
## Commands
```bash
./bench.sh                 # benchmark_app timing on this CPU
{infer_commands(traits, "on this machine")}
```
`infer.py --backend onnxruntime` runs the same code on ONNX Runtime.

## INT8: the integer kernels are checked on this CPU first
OpenVINO runs a Q/DQ model with integer kernels, and whether they compute the model's function depends on
the CPU: without VNNI or AMX their 16-bit sums saturate (OpenVINO's "saturation issue"), and OpenVINO 2026.4
quantizes a signed activation after a Concat wrongly on AVX-512 VNNI CPUs without AMX. So `infer.py` first
runs its first images through the integer kernels and through the model's exact function, and uses the
integer kernels only where the two agree (else the exact path: the weights' Q/DQ folded into float weights,
the model's own results at float speed); `--int8-kernels integer|exact` forces either. `bench.sh` always
times the integer kernels on the graph as written: where `infer.py` says they disagree, its figures are not
those of a correct run.

## Timing
{timing}
"""
