"""DeepStream (`nvinfer`) configuration read from the model's stored preprocessing, and what DLA cannot run.

nvinfer feeds the network `net-scale-factor * (pixel - offsets)`, pixels 0..255 per channel in
`model-color-format` order: orinflow's `(pixel / 255 - mean) / std` is net-scale-factor 1 / (255 std) with
offsets 255 mean, exact when the three std are equal (nvinfer has one factor for all channels).
"""
from __future__ import annotations

import onnx

from ..config import LETTERBOX_PAD
from ..errors import OrinflowError
from ..formats import class_names, ini_list, ini_value
from ..models.processing import Processing

# The parser that reads EfficientNMS_TRT's outputs as TensorRT writes them: num_dets (int32), det_boxes (x1, y1,
# x2, y2 in network pixels), det_scores, det_classes (int32). It is in NVIDIA's TAO post-processors for DeepStream
# (deepstream_tao_apps), built on the device; DeepStream's own sample parsers read other layouts.
EFFICIENT_NMS_PARSER = "NvDsInferParseCustomEfficientNMSTLT"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}

# ONNX ops that map to layers TensorRT runs on DLA (TensorRT's "DLA Supported Layers and Restrictions": activation,
# comparison, concatenation, convolution and fully connected, deconvolution, element-wise, LRN, parametric ReLU,
# pooling, reduce, resize, scale, shuffle, slice, softmax, unary). Each layer has further limits (sizes, axes,
# modes) that only the build applies; what is not listed here runs on the GPU with --allowGPUFallback.
DLA_OPS = {"Conv", "ConvTranspose", "Gemm", "Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu", "Add", "Sub",
           "Mul", "Div", "Max", "Min", "Pow", "Equal", "Greater", "Less", "Concat", "MaxPool", "AveragePool",
           "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LRN", "ReduceMax", "Resize", "Upsample",
           "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Softmax", "Abs", "Sin",
           "Cos", "Identity", "Dropout"}


SELECTION_OPS = {"NonMaxSuppression", "TopK", "EfficientNMS_TRT"}


def dla_fallback_ops(model: onnx.ModelProto, activations: set[str]) -> dict[str, int]:
    """Ops of the graph outside DLA's layer list, counted, among the nodes that compute activations or select
    detections (shape arithmetic and constants are folded by TensorRT and never run; NonMaxSuppression's integer
    indices are no activation, yet it runs)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        runs = node.op_type in SELECTION_OPS or any(t in activations for t in node.output)
        if node.op_type not in DLA_OPS and runs:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def scale_and_offsets(processing: Processing) -> tuple[float, list[float], bool]:
    """net-scale-factor, offsets (per channel, in the model's channel order) and whether they are exact."""
    std = [float(s) for s in processing.std]
    exact = max(std) - min(std) <= 1e-6 * max(abs(s) for s in std)
    factor = 1.0 / (255.0 * sum(std) / 3)
    return factor, [255.0 * float(m) for m in processing.mean], exact


def infer_config(processing: Processing, network_mode: str, calib_cache: str | None, nms: dict | None,
                 outputs: list[str], batch: int = 1) -> tuple[str, dict]:
    """config_infer_primary.txt for nvinfer, and what it could not state exactly."""
    if not processing.room.deepstream:
        raise OrinflowError(f"--deepstream: nvinfer reads a {processing.task} model only through a custom parser, "
                            "which orinflow does not write yet; deploy without --deepstream")
    factor, offsets, exact = scale_and_offsets(processing)
    lines = ["[property]", "gpu-id=0", f"net-scale-factor={factor:.10g}",
             f"offsets={';'.join(f'{o:.6g}' for o in offsets)}", f"model-color-format={0 if processing.channels == 'rgb' else 1}", "onnx-file=model.onnx",
             "model-engine-file=model.engine", "labelfile-path=labels.txt"]
    if calib_cache:
        lines.append(f"int8-calib-file={ini_value(calib_cache, 'calibration cache file')}")
    lines += [f"batch-size={batch}", f"network-mode={NETWORK_MODES[network_mode]}",
              f"infer-dims=3;{processing.imgsz[0]};{processing.imgsz[1]}", "gie-unique-id=1", "process-mode=1",
              f"network-type={processing.room.deepstream_network_type}"]
    notes = {} if exact else {"std": f"nvinfer has one scale for all channels: std {processing.std} is replaced by "
                                     "their mean"}
    if processing.room.instances:
        letterbox = processing.resize == "letterbox"
        lines += [f"maintain-aspect-ratio={int(letterbox)}", f"symmetric-padding={int(letterbox)}",
                  f"num-detected-classes={len(processing.names)}"]
        if letterbox:
            notes["padding"] = f"nvinfer pads the letterbox with black, orinflow with grey ({LETTERBOX_PAD})"
        lines += _detection_lines(nms, outputs, notes)
    else:
        lines += ["classifier-threshold=0.0"]
        if processing.crop_fraction < 1.0:
            notes["crop"] = (f"nvinfer scales the whole frame; the model was evaluated on a centre crop "
                             f"({processing.crop_fraction:.3g})")
    return "\n".join(lines) + "\n", notes


def _detection_lines(nms: dict | None, outputs: list[str], notes: dict) -> list[str]:
    if nms is None:
        notes["parser"] = ("the raw head output needs a parser for this model's decode (none ships with "
                           "DeepStream): deploy with --nms trt for the end-to-end graph")
        return ["cluster-mode=2", f"output-blob-names={ini_list(outputs, 'output tensor')}", "", "[class-attrs-all]",
                "pre-cluster-threshold=0.25", "nms-iou-threshold=0.45"]
    lines = ["cluster-mode=4", f"output-blob-names={ini_list(outputs, 'output tensor')}"]  # NMS runs in the engine
    if nms["flavour"] == "trt":
        lines += [f"parse-bbox-func-name={EFFICIENT_NMS_PARSER}",
                  "custom-lib-path=/path/to/libnvds_infercustomparser_tao.so"]
        notes["parser"] = (f"{EFFICIENT_NMS_PARSER} (NVIDIA's deepstream_tao_apps post-processor) reads the "
                           "outputs; build it on the device and set custom-lib-path")
    else:
        notes["parser"] = ("the (batch, keep-topk, 6) output (x1, y1, x2, y2, score, class) needs a custom parser; "
                           "deploy with --nms trt for one that exists")
    return lines + ["", "[class-attrs-all]", f"pre-cluster-threshold={nms['conf']}"]


def labels_text(processing: Processing) -> str:
    """labels.txt as nvinfer reads it: a detector's labels one per line, a classifier's on one line separated by
    ';'. Every class id 0..n-1 must have a name, each a valid label (formats.class_names)."""
    names = class_names(processing.names)
    return processing.room.deepstream_label_separator.join(names) + "\n"
