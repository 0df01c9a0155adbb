"""Measuring and shipping: evaluate one model or several side by side, compare two layer by layer, deploy
a Jetson bundle, and the report of every run record."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import DYNAMIC_DEFAULT_BATCH, workspace
from ..errors import OrinflowError
from .common import PathLike, Say, checked, locate
from .prepare import load


@checked
def evaluate(model: PathLike, data: PathLike | None = None, *, split: str = "val", conf: float = 0.001,
             iou: float | None = None, max_det: int = 300, batch: int = 1, runs: int = 50, warmup: int = 5,
             threads: int | None = None,
             runtime: str = "auto", int8_kernels: str = "auto", skip_bad_images: bool = False, metric: str = "yolov5",
             save_json: PathLike | None = None, coco_json: PathLike | None = None, images: PathLike | None = None,
             json: PathLike | None = None, class_map: str | None = None, arch: str | None = None,
             imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
             modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
             say: Say = print) -> dict:
    """Accuracy (mAP50 and mAP50-95, or top-1 and top-5), latency (`runs` timed runs; 0 skips) and size of one
    model on `data`/`split`; `json` also writes the record there.

    metric "coco" adds the COCO evaluation's AP, AP50, AP75, APs, APm, APl and AR (faster-coco-eval) under
    the record's metrics["coco"]; `save_json` then writes the detections in COCO result format.
    `coco_json` and `images` (a COCO instances JSON and its image folder) replace `data`.
    A detector's classes must be the data's (count, and names where both have them): `class_map` pairs them
    otherwise, "names" (equal names) or "0:2,1:5" (model:data ids); other model classes are not scored.
    int8_kernels (auto, integer, exact): how ONNX Runtime and OpenVINO run a Q/DQ model. auto runs their integer
    kernels only where they are measured to agree with the model's exact function on this CPU, on the data's
    first images (docs/runtimes.md); the record's runtime_details["int8_kernels"] holds the measurement.
    """
    return evaluate_many([model], data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                   warmup=warmup, threads=threads, runtime=runtime, int8_kernels=int8_kernels,
                   skip_bad_images=skip_bad_images, metric=metric,
                   save_json=save_json, coco_json=coco_json, images=images, json=json, class_map=class_map,
                   arch=arch, imgsz=imgsz,
                   mean=mean, std=std, crop=crop, modules=modules, head=head, names=names, say=say)[0]


def _not_a_list(a=None, **_) -> None:
    if isinstance(a, (list, tuple)):
        raise OrinflowError("orinflow.compare(A, B) compares two models layer by layer; evaluate several side by "
                            "side with orinflow.evaluate_many(models, data)")


@checked(before=_not_a_list)
def compare(a: PathLike, b: PathLike, data: PathLike | None = None, *, split: str = "val", images: int = 16,
            seed: int = 0, conf: float = 0.25, top: int = 5, output: PathLike | None = None,
            runtime_a: str = "auto", runtime_b: str = "auto", int8_kernels: str = "auto", arch: str | None = None,
            imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
            modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
            say: Say = print) -> dict:
    """Where two forms of one model part (docs/compare.md): any two of a checkpoint, an FP32/FP16/Q/DQ/end-to-end
    ONNX and an engine, on `images` real images drawn with `seed` from `data`/`split`.

    Layers: per paired tensor, cosine, SQNR (dB), max |A - B| and the SQNR lost there ("growth"), in graph order;
    `top` worst by growth. Detections (score threshold `conf`): the raw head outputs before NMS, then the final
    detections matched per image (same class, IoU >= 0.9), each unmatched one with its cause; the mAP of both on
    those images when `data` is labelled. Writes compare.json and compare.png into `output` (default
    workspace/compare/<A>_vs_<B>) and returns the record.
    runtime_a, runtime_b: what runs an ONNX side, auto (ONNX Runtime) or openvino; one model on two runtimes
    is `compare(m, m, runtime_b="openvino")`. int8_kernels: as in `evaluate`, for every ONNX side. Each ONNX
    side's final outputs are also computed as `evaluate` computes them; where reading the layers changes them
    (a runtime compiles another graph), the record says so and locates the departure by compiling prefixes of
    the graph (record["probing"]).
    """
    from ..evaluate.alignment import load_side
    from ..evaluate.compare_report import run_compare
    from ..io import check_output_folder, require_file
    from ..runtime import check_runtime

    if images < 1 or top < 1:
        raise OrinflowError("--images and --top must be >= 1")
    if not 0 < conf < 1:
        raise OrinflowError(f"--conf must lie in (0, 1), got {conf}")
    if not data:
        raise OrinflowError("give the images with --yaml data.yaml (and --split) or --data folder/")
    a, b = locate(a, say), locate(b, say)
    for path in (a, b):
        require_file(path, "model")
    check_runtime([a, b], "auto", int8_kernels)
    runtimes = (runtime_a, runtime_b)
    stems = [Path(p).stem + (f"_{r}" if r != "auto" else "") for p, r in zip((a, b), runtimes)]
    folder = check_output_folder(output or workspace() / "compare" / f"{stems[0]}_vs_{stems[1]}", [a, b, data])
    options = {"arch": arch, "imgsz": imgsz, "mean": mean, "std": std, "crop": crop, "modules": modules,
               "head": head, "names": names}
    sides = tuple(load_side(path, label, lambda checkpoint: load(checkpoint, **options), runtime, int8_kernels)
                  for path, label, runtime in ((a, "A", runtime_a), (b, "B", runtime_b)))
    return run_compare(sides, (a, b), data, split, images, seed, conf, top, Path(folder), say)


@checked
def evaluate_many(models: Sequence[PathLike], data: PathLike | None = None, *, split: str = "val", conf: float = 0.001,
            iou: float | None = None, max_det: int = 300, batch: int = 1, runs: int = 50, warmup: int = 5,
            threads: int | None = None, runtime: str = "auto", int8_kernels: str = "auto",
            skip_bad_images: bool = False, metric: str = "yolov5",
            save_json: PathLike | None = None, coco_json: PathLike | None = None, images: PathLike | None = None,
            json: PathLike | None = None, class_map: str | None = None, arch: str | None = None,
            imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
            modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
            say: Say = print) -> list[dict]:
    """`evaluate` for several models on the same data and settings (`evaluate --compare`; the first is the
    baseline of a table). Their batch-1 latencies are timed in turn, round by round, so drift hits all alike.

    `json` writes the record of one model, or {"compare": [records]} for several.
    """
    from ..evaluate import EvalOptions, evaluate_model, evaluate_side_by_side
    from ..io import check_output, write_json
    from ..runtime import check_runtime

    if not models:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    models = [locate(path, say) for path in models]
    check_runtime(models, runtime, int8_kernels)
    dataset = _evaluation_data(data, coco_json, images, skip_bad_images)
    options = EvalOptions(conf=conf, iou=iou, max_det=max_det, batch=batch, latency_runs=runs, warmup=warmup,
                          threads=threads, measure_latency=runs > 0, runtime=runtime, int8_kernels=int8_kernels,
                          skip_bad_images=skip_bad_images, metric=metric, save_json=save_json, class_map=class_map)
    options.validate()
    if save_json is not None:
        if len(models) > 1:
            raise OrinflowError("--save-json writes one model's detections: evaluate one model with -m")
        check_output(save_json, (".json",), [*models, data, coco_json, json], flag="--save-json")
    if json is not None:
        check_output(json, (".json",), [*models, data, coco_json], flag="--json", record_of="evaluate")
    loading = dict(arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names)
    if len(models) == 1:
        say(f"evaluating {models[0]} ...")
        records = [evaluate_model(load(models[0], **loading), dataset, split, options)]
    else:  # every model loaded before the first is scored: a bad one fails at once; latency timed in turn
        records = evaluate_side_by_side([load(path, **loading) for path in models], dataset, split, options, say)
    if json is not None:
        write_json(json, records[0] if len(records) == 1 else {"compare": records})
    return records


@checked
def named_models(model: PathLike) -> list[Path]:
    """`evaluate -m NAME --compare` (the original switch): NAME's checkpoint (NAME.pt here or in the workspace, or the
    file given) first, then every ONNX of that name in the workspace (NAME.onnx, NAME_*.onnx: raw and optimized),
    deploy bundles and caches left out."""
    given = Path(model)
    name = given.stem if given.suffix else given.name
    candidates = [given] if given.suffix else [Path(f"{name}.pt"), workspace() / f"{name}.pt"]
    checkpoint = next((p for p in candidates if p.suffix.lower() != ".onnx" and p.is_file()), None)
    root = workspace()
    found = sorted(p for p in root.rglob("*.onnx") if (p.stem == name or p.stem.startswith(name + "_"))
                   and not {"deploy", "cache"} & set(p.relative_to(root).parts))
    models = ([checkpoint] if checkpoint else []) + [p for p in found if p != checkpoint]
    if len(models) < 2:
        raise OrinflowError(f"-m {model} --compare: found {', '.join(map(str, models)) or 'nothing'}; it needs "
                            f"{name}.pt (here or in {root}) and ONNX files named {name}*.onnx in {root}")
    return models


def _evaluation_data(data, coco_json, images, skip_bad_images: bool = False):
    """The evaluation Dataset: a dataset YAML or folder, or a COCO JSON with its image folder."""
    from ..data import load_coco_json

    if coco_json is not None:
        if data is not None:
            raise OrinflowError("give the evaluation data once: --yaml data.yaml, or --coco-json with --images")
        if images is None:
            raise OrinflowError("--coco-json needs --images, the folder its file names are in")
        return load_coco_json(coco_json, images, skip_bad_images)
    if not data:
        raise OrinflowError("give the evaluation data with --yaml data.yaml or --data folder/ (or --coco-json)")
    return data


@checked
def deploy(model: PathLike, *, output: PathLike | None = None, trt: str = "10", fp16: bool = True,
           min_batch: int = 1, opt_batch: int | None = None, max_batch: int | None = None,
           workspace_mib: int | None = None, nms: str = "trt", pre_topk: int = 30000, keep_topk: int = 300,
           iou: float | None = None, conf: float = 0.25, implicit: bool = False, calib_cache: PathLike | None = None,
           dla: int | None = None, deepstream: bool = False, target: str = "jetson", overwrite: bool = False,
           trust_cache: bool = False, say: Say = print) -> dict:
    """A Jetson bundle (default workspace/deploy/<model>): the ONNX, build_engine.sh with trtexec flags read from
    the model, bench.sh, infer.py and a README. Dynamic-batch models get a profile from min/opt/max batch
    (opt default 8; 1 on DLA).

    target "openvino": an x86 bundle instead (docs/deploy.md): the ONNX (without EfficientNMS_TRT), infer.py on
    OpenVINO, bench.sh with OpenVINO's benchmark_app (batch 1, and opt_batch for a free-batch graph) and a README;
    the TensorRT options (trt, implicit, calib_cache, dla, deepstream, nms) do not apply and are refused.

    nms: an orinflow detector without NMS inside is deployed end-to-end, so no NMS runs on the Jetson's CPU:
    "trt" (EfficientNMS_TRT; the bundle also keeps model_raw.onnx for ONNX Runtime), "onnx"
    (NonMaxSuppression) or "none". pre_topk, keep_topk, iou, conf: as `export`'s.
    fp16: FP16 kernels for what is not quantized; with trt "10" a Q/DQ model's FP32 layers become FP16 in the
    bundle's graph (--stronglyTyped builds the types the graph gives), see docs/deploy.md.
    implicit: build a floating-point ONNX in INT8 from `calib_cache` (`calib_cache`'s file, --int8 --fp16
    --calib). The cache is checked first: its calibrator must be TensorRT's entropy calibrator (what trtexec
    reads), it must cover the model's activations, and the emulated drop its record holds (calib-cache measured
    it) is shown; a cache covering none of them, or whose emulation lost more than 10 points, is refused unless
    `trust_cache`. dla: the DLA core (0 or 1) to build for, GPU fallback allowed. deepstream: add nvinfer's
    config_infer_primary.txt and labels.txt (docs/deploy.md, "Implicit INT8, DLA and DeepStream").
    """
    from ..deploy.bundle import check_bundle_slot, write_bundle
    from ..deploy.traits import model_traits
    from ..deploy.trtexec import BuildOptions
    from ..deploy.prepare import prepare_graph
    from ..export.nms import FLAVOURS, NmsSpec
    from ..io import check_output_folder, private_folder, require_file

    path = require_file(locate(model, say), "model")
    if path.suffix.lower() != ".onnx":
        raise OrinflowError(f"{path} is not ONNX: export or quantize it first (orinflow export / quantize)")
    if target not in DEPLOY_TARGETS:
        raise OrinflowError(f"unknown --target {target!r}; choose one of {', '.join(DEPLOY_TARGETS)}")
    if target == "openvino":
        tensorrt_only = {"--implicit": implicit, "--calib-cache": calib_cache is not None, "--dla": dla is not None,
                         "--deepstream": deepstream, "--trt": trt != "10", "--nms": nms != "trt"}
        return _openvino_bundle(path, output, opt_batch or DYNAMIC_DEFAULT_BATCH, overwrite,
                                [flag for flag, given in tensorrt_only.items() if given])
    if nms not in (*FLAVOURS, "none"):
        raise OrinflowError(f"--nms {nms}: choose trt, onnx or none")
    for flag, value in (("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if value is not None and value < 1:
            raise OrinflowError(f"{flag} {value}: give a batch of 1 or more (leave it out for the default)")
    _refuse_dla_qdq(path, dla)
    spec = NmsSpec(flavour=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf) if nms != "none" else None
    if spec is not None:
        spec.validate()
    cache, cache_check = implicit_cache(implicit, calib_cache, path, trust_cache, say)
    output = check_output_folder(output or workspace() / "deploy" / path.stem, [path, cache], replaced=True)
    check_bundle_slot(Path(output), overwrite)
    with private_folder() as folder:
        deployed, done = prepare_graph(path, spec, fp16 and trt == "10" and cache is None, folder / "model.onnx")
        traits = model_traits(deployed)
        if deepstream and not traits.has_processing:
            raise OrinflowError(f"{path} carries no orinflow preprocessing metadata, which --deepstream reads: "
                                "export it with orinflow (or `orinflow adopt` a foreign ONNX)")
        default = DYNAMIC_DEFAULT_BATCH if traits.dynamic_batch and dla is None else min_batch
        opt = opt_batch or min(default, max_batch or default)
        options = BuildOptions(trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt, max_batch=max_batch or opt,
                               workspace_mib=workspace_mib, calib="calib.cache" if cache else None, dla=dla)
        nms_done = done.get("nms")
        keep_raw = nms_done is not None and nms_done["flavour"] == "trt"  # ONNX Runtime lacks the plugin
        return write_bundle(deployed, Path(output), options, overwrite, traits, raw=path if keep_raw else None,
                            nms=nms_done, source=path, high_precision=done.get("high_precision"), calib_cache=cache,
                            deepstream=deepstream, cache_check=cache_check)


DEPLOY_TARGETS = ("jetson", "openvino")


def _openvino_bundle(path: Path, output, batch: int, overwrite: bool, refused: list[str]) -> dict:
    from ..deploy.openvino import write_openvino_bundle
    from ..io import check_output_folder
    from ..runtime.openvino import import_openvino

    if refused:
        raise OrinflowError(f"{', '.join(refused)}: TensorRT options, which --target openvino does not use")
    import_openvino()  # write_openvino_bundle reads the bundle's model with it
    folder = check_output_folder(output or workspace() / "deploy" / f"{path.stem}_openvino", [path], replaced=True)
    return write_openvino_bundle(path, Path(folder), batch, overwrite)


def _refuse_dla_qdq(path: Path, dla: int | None) -> None:
    """trtexec.refuse_dla_on_qdq on the model given, before the graph is prepared (converted to FP16)."""
    import onnx

    from ..deploy.trtexec import refuse_dla_on_qdq
    from ..optimize.common.graph import QDQ_OPS

    if dla is not None:
        graph = onnx.load(str(path), load_external_data=False)
        refuse_dla_on_qdq(dla, any(n.op_type in QDQ_OPS for n in graph.graph.node))


def implicit_cache(implicit: bool, calib_cache: PathLike | None, model: Path, trust: bool, say: Say):
    """The checked calibration cache of an implicit build and what the check found, or (None, None)."""
    from ..io import require_file
    from ..optimize.quantize.cache_check import check_implicit_cache

    if calib_cache is not None and not implicit:
        raise OrinflowError("--calib-cache is read by implicit INT8 builds: add --implicit")
    if not implicit:
        return None, None
    if calib_cache is None:
        raise OrinflowError("--implicit builds INT8 from a calibration cache: give --calib-cache model.cache (made by "
                            "`orinflow calib-cache`)")
    cache = require_file(locate(calib_cache, say), "--calib-cache")
    return cache, check_implicit_cache(cache, model, trust, say)


@checked
def report(sources: Sequence[PathLike] | None = None, *, output: PathLike | None = None) -> dict:
    """report.md and a self-contained report.html (default workspace/report) of every evaluation record found in
    `sources` (record files or folders; default the workspace). Returns the paths written, the row count and
    "skipped": the .json files found in folders that are not JSON (a file given by name must be)."""
    from ..io import check_output_folder
    from ..report import write_report

    sources = [Path(s) for s in (sources or [workspace()])]
    output = check_output_folder(output or workspace() / "report", sources)
    return write_report(sources, Path(output))
