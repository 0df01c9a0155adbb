"""The bundle's `infer.py`: TensorRT (or ONNX Runtime, or OpenVINO) inference on images, and `--eval` for mAP on the device.

It runs orinflow's own preprocessing, postprocessing and evaluator (`evaluate.accuracy`), the
code `orinflow evaluate` runs, so device figures differ from desktop ones only by the runtime.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import OrinflowError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")


def parse_args(argv: list[str] | None, bundle: Path, default_backend: str = "auto") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="infer.py", description="Run the bundled model on images, or --eval a "
                                     "dataset, with orinflow's pre/post-processing.")
    parser.add_argument("sources", nargs="*", help="images or folders of images")
    parser.add_argument("--model", type=Path, help="engine or ONNX (default: model.engine if built, else model.onnx; "
                        "model_raw.onnx, if there, on ONNX Runtime)")
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend,
                        help="auto: TensorRT for an engine or where tensorrt imports, else ONNX Runtime; openvino: "
                        "OpenVINO on this CPU (default of an x86 bundle)")
    parser.add_argument("--int8-kernels", choices=("auto", "integer", "exact"), default="auto",
                        help="ONNX Runtime / OpenVINO on a Q/DQ model: auto runs the integer kernels only where they "
                        "are measured (on the first images) to agree with the model's exact function on this CPU; "
                        "integer always; exact never")
    parser.add_argument("--conf", type=float, default=None, help="score threshold (default 0.25; 0.001 for --eval)")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU (default: the model family's)")
    parser.add_argument("--max-det", type=int, default=300, help="detections kept per image")
    parser.add_argument("--batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--eval", metavar="DATA_YAML", help="report mAP (or top-1) on this dataset instead")
    parser.add_argument("--split", default="val", help="split of --eval's YAML")
    args = parser.parse_args(argv)
    if args.model is None:
        engine, raw = bundle / "model.engine", bundle / "model_raw.onnx"  # raw: without EfficientNMS_TRT
        onnxruntime = args.backend in ("onnxruntime", "openvino") or (args.backend == "auto"
                                                                      and not _tensorrt_imports())
        args.model = engine if engine.exists() else raw if raw.exists() and onnxruntime else bundle / "model.onnx"
    if not args.sources and not args.eval:
        parser.error("give images/folders, or --eval data.yaml")
    return args


def make_backend(model: Path, backend: str, max_batch: int, int8_kernels: str = "auto"):
    """A Runner for the engine or ONNX file. ONNX Runtime and OpenVINO check their integer kernels on the first
    images they run (runtime/trust.py), uncached: the bundle writes nothing besides what it is asked to."""
    from ..runtime.checked import checked_runner
    from ..runtime.tensorrt import ENGINE_SUFFIXES, TrtRunner

    if backend == "openvino":
        return checked_runner(model, "openvino", int8_kernels=int8_kernels, cache=False)
    if backend == "auto":
        backend = "tensorrt" if model.suffix in ENGINE_SUFFIXES or _tensorrt_imports() else "onnxruntime"
    if backend == "onnxruntime":
        if model.suffix != ".onnx":
            raise OrinflowError(f"ONNX Runtime runs .onnx files, not {model.name}")
        return checked_runner(model, "onnxruntime", int8_kernels=int8_kernels, cache=False)
    return TrtRunner(model, max_batch=max_batch)


def _tensorrt_imports() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def image_files(sources: list[str]) -> list[Path]:
    from ..config import IMAGE_SUFFIXES

    files = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            files.append(source)
        else:
            raise OrinflowError(f"no such image or folder: {source}")
    if not files:
        raise OrinflowError(f"no images found in {', '.join(sources)}")
    return files


def infer(runner, processing, images: list[Path], conf: float, iou, max_det: int, batch: int) -> list[dict]:
    from ..evaluate.accuracy import predictions

    post = processing.room.post_options(conf, iou, max_det)
    results = []
    for index, _, result in predictions(runner, processing, images, batch, **post):
        results.append({"image": str(images[index]), **processing.room.describe(result, processing.names)})
    return results


def main(argv: list[str] | None = None, bundle: Path | None = None, default_backend: str = "auto") -> int:
    from ..evaluate import EvalOptions, evaluate_model
    from ..models.onnx_model import load_onnx

    bundle = bundle or Path(sys.argv[0]).resolve().parent
    args = parse_args(argv, bundle, default_backend)
    try:
        # The processing spec travels in the ONNX metadata (an engine's is its model.onnx's).
        onnx_model = load_onnx(args.model if args.model.suffix == ".onnx" else bundle / "model.onnx")
        runner = make_backend(args.model, args.backend, args.batch, args.int8_kernels)
        if args.eval:
            options = EvalOptions(conf=0.001 if args.conf is None else args.conf, iou=args.iou, max_det=args.max_det,
                                  batch=args.batch, measure_latency=False)
            output = evaluate_model(onnx_model, args.eval, args.split, options, runner=runner)
            print(json.dumps({k: output[k] for k in ("model", "runtime", "data", "images")} |
                             {"metrics": {k: v for k, v in output["metrics"].items() if not isinstance(v, dict)}}))
        else:
            conf = 0.25 if args.conf is None else args.conf
            output = infer(runner, onnx_model.processing, image_files(args.sources), conf, args.iou, args.max_det,
                           args.batch)
            for item in output:
                print(_one_line(item))
    except OrinflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


def _one_line(item: dict) -> str:
    if "detections" in item:
        found = ", ".join(f"{d['name']} {d['score']:.2f}" for d in item["detections"][:10])
        return f"{item['image']}: {len(item['detections'])} detections{': ' + found if found else ''}"
    return f"{item['image']}: " + ", ".join(f"{t['name']} {t['probability']:.3f}" for t in item["top5"])
