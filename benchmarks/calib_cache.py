"""TensorRT calibration caches: every method's coverage of the FP32 graph's activations, the time it takes, and
`--from-qdq` reproducing a Q/DQ model's scales exactly.

    python benchmarks/calib_cache.py                  # embedded demo detector and its generated data
    python benchmarks/calib_cache.py -m ../shared/weights/yolov5n.pt --imgsz 640 \
        --yaml ../shared/data/coco-tune/coco-tune.yaml --split val -n 128

Prints one line per method (tensors, coverage of every activation, decode included; amax range; seconds)
with the CPU's name, the default (head-protected) cache's count, then the from-qdq check against an INT8
(max, tensorrt) quantization of the same export.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import orinflow  # noqa: E402
from orinflow.evaluate.latency import cpu_name  # noqa: E402
from orinflow.optimize.quantize.calib_cache import LEVELS, METHODS, read_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", help="model (default: the embedded demo detector)")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--yaml", help="calibration dataset YAML (default: generated shapes)")
    parser.add_argument("--split", default="train")
    parser.add_argument("-n", "--num-images", type=int, default=128)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; empty: only from-qdq")
    args = parser.parse_args()
    quiet = {"say": lambda m: None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, data = args.model, args.yaml
        if model is None:
            from orinflow.demo import shapes
            from orinflow.demo.pipeline import DEMO_MODEL

            model, data = DEMO_MODEL, shapes.generate(work / "shapes")
        fp32 = orinflow.export(model, imgsz=args.imgsz, output=work / "fp32.onnx", **quiet)["model"]
        calib = work / "calib.npy"
        orinflow.calibrate(fp32, data, split=args.split, num_images=args.num_images, output=calib, **quiet)
        print(f"{Path(str(model)).name}: calibration caches on {args.num_images} images of {data}:{args.split}; "
              f"CPU {cpu_name()}")
        for method in filter(None, args.methods.split(",")):
            started = time.perf_counter()
            record = orinflow.calib_cache(fp32, calib=calib, method=method, head_protect=False,
                                          output=work / f"{method}.cache", **quiet)
            low, high = (s * LEVELS for s in record["scale_range"])
            print(f"  {method:10s} {record['tensors']} tensors, coverage {record['coverage']:.1%} of "
                  f"{record['activations']} activations, amax {low:.3g}..{high:.3g}, "
                  f"{time.perf_counter() - started:.1f} s")
        default = orinflow.calib_cache(fp32, calib=calib, output=work / "default.cache", **quiet)
        print(f"  default (entropy, head protected): {default['tensors']} tensors; the decode's "
              f"{default['head_protected']} tensors left without a scale")
        quantized = orinflow.quantize(fp32, calib=calib, method="max", output=work / "int8.onnx", **quiet)["model"]
        record = orinflow.calib_cache(fp32, from_qdq=quantized, output=work / "qdq.cache", **quiet)
        _, scales = read_cache(work / "qdq.cache")
        graph = onnx.load(quantized).graph
        weights = {t.name: t for t in graph.initializer}
        carried = {n.input[0]: float(numpy_helper.to_array(weights[n.input[1]]).reshape(()))
                   for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights}
        exact = scales == carried
        print(f"  from-qdq   {record['tensors']} tensors ({record['coverage']:.1%} of the activations, the ones the "
              f"Q/DQ model quantizes); scales equal the model's Q/DQ scales exactly: {exact}")
        if not exact:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
