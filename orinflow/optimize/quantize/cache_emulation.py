"""A calibration cache is measured before it is trusted: the FP32 graph run with a Q/DQ pair at each cached tensor.

TensorRT's implicit INT8 quantizes a layer's tensors with the cache's scales (symmetric, zero point 0, amax =
127 x scale) wherever it runs the layer in INT8. The emulation quantizes every cached tensor that way, the most
TensorRT can quantize, and runs the graph on ONNX Runtime:
- on labelled data (calib-cache given --yaml), the main metric (mAP50-95 or top-1) of the FP32 model and of the
  emulation on the same images: the drop in points;
- on a calibration array alone, how far the emulation keeps the FP32 model's own answers on those images: the
  share of its detections (score 0.25 or more) found again (same class, IoU 0.5 or more), or of its top-1 classes.
A cache whose drop exceeds ABSURD_DROP points, or whose agreement is under ABSURD_AGREEMENT, is refused by
`deploy --implicit` unless told (--trust-cache): the entropy defect that clipped every pixel of the input read
0.0001 mAP50-95 here against 0.909 for max.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ABSURD_DROP = 10.0
ABSURD_AGREEMENT = 0.5
MEASURE_IMAGES = 32
MATCH_IOU = 0.5
MATCH_CONF = 0.25


def emulated_graph(model: onnx.ModelProto, scales: dict[str, float]) -> onnx.ModelProto:
    """A copy of the FP32 `model` whose every cached tensor (but the graph's outputs, which TensorRT returns in
    float) passes through QuantizeLinear/DequantizeLinear with the cache's scale, as INT8 with zero point 0. Each
    pair follows the node making its tensor (a graph input's comes first), so the graph stays in order."""
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    outputs = {o.name for o in graph.output}
    renamed = {}

    def pair(tensor: str) -> list:
        if tensor not in scales or tensor in outputs:
            return []
        index = len(renamed)
        renamed[tensor] = f"{tensor}__cache_dq"
        scale, zero = f"__cache_scale_{index}", f"__cache_zero_{index}"
        graph.initializer.extend([numpy_helper.from_array(np.array(scales[tensor], np.float32), scale),
                                  numpy_helper.from_array(np.array(0, np.int8), zero)])
        return [helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}__cache_q"]),
                helper.make_node("DequantizeLinear", [f"{tensor}__cache_q", scale, zero], [renamed[tensor]])]

    nodes = [n for i in graph.input for n in pair(i.name)]
    for node in list(graph.node):
        node.input[:] = [renamed.get(name, name) for name in node.input]  # its inputs' pairs came before it
        nodes += [node, *(n for tensor in node.output for n in pair(tensor))]
    del graph.node[:]
    graph.node.extend(nodes)
    return emulated


def measure_cache(fp32, scales: dict[str, float], calib: np.ndarray, data=None, say=print) -> dict:
    """The emulated cache against the FP32 model (`fp32`, an OnnxModel): on `data` (a labelled Dataset) the main
    metric's drop, else the agreement on `calib`'s first images. {"kind", "images", ..., "absurd"}."""
    from ...io import private_folder
    from ...models import load_model

    with private_folder() as folder:
        path = folder / Path(fp32.path).name
        onnx.save(emulated_graph(onnx.load(str(fp32.path)), scales), str(path))
        emulated = load_model(path)
        if data is not None and data.task is not None:
            found = _metric_drop(fp32, emulated, data)
        else:
            found = _agreement(fp32, emulated, np.asarray(calib[:MEASURE_IMAGES], np.float32))
    found["absurd"] = (found.get("drop_points", 0.0) > ABSURD_DROP) or (found.get("agreement", 1.0) < ABSURD_AGREEMENT)
    say(f"emulated on {found['images']} images ({describe(found)})")
    return found


def describe(found: dict) -> str:
    """One line: 'mAP50-95 FP32 0.917, with the cache 0.909 (-0.80 points)' or 'keeps 97% of FP32's detections'."""
    if found["kind"] == "metric":
        return (f"{found['metric']} FP32 {found['fp32']:.4f}, with the cache's ranges {found['emulated']:.4f}, "
                f"{-found['drop_points']:+.2f} points")
    return f"keeps {found['agreement']:.1%} of the FP32 model's {found['what']} on the calibration images"


def _metric_drop(fp32, emulated, data) -> dict:
    from ...data import draw_images
    from ...evaluate import EvalOptions, evaluate_model

    subset = draw_images(data, MEASURE_IMAGES, 0)
    options = EvalOptions(measure_latency=False, int8_kernels="exact")
    key = fp32.processing.room.headline
    before = evaluate_model(fp32, subset, options=options)["metrics"][key]
    after = evaluate_model(emulated, subset, options=options)["metrics"][key]
    return {"kind": "metric", "metric": key, "images": len(subset), "fp32": before, "emulated": after,
            "drop_points": 100 * (before - after)}


def _agreement(fp32, emulated, images: np.ndarray) -> dict:
    from ...runtime import OrtRunner

    reference, candidate = OrtRunner(fp32.path).run(images), OrtRunner(emulated.path, form="exact").run(images)
    return {"kind": "agreement", "images": len(images),
            **fp32.processing.room.agreement(fp32.processing, reference, candidate, MATCH_CONF, MATCH_IOU)}
