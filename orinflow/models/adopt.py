"""`orinflow adopt`: give an ONNX detector from elsewhere (Ultralytics' exporter, the yolov5 repository,
an end-to-end graph with NMS inside) the pre- and post-processing metadata orinflow reads.

What the graph says is taken from it: the input size from the input's shape, the head layout and
class count from the first output's shape, and the class names from Ultralytics' own metadata when
present. The rest is asked for in one line. Preprocessing is the YOLO convention every one of these
exporters assumes: letterbox with grey 114, RGB, scaled to 0..1.
"""
from __future__ import annotations

import ast
from pathlib import Path

import onnx
import yaml

from ..errors import OrinflowError
from .onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, read_metadata, write_metadata
from .processing import HEAD_ANCHOR_FREE, HEAD_END2END, HEAD_OBJECTNESS, Processing

HEADS = {"yolov8": HEAD_ANCHOR_FREE, "yolov5": HEAD_OBJECTNESS, "end2end": HEAD_END2END}
NMS_IOU = {"yolov8": 0.7, "yolov5": 0.6, "end2end": 0.7}  # each family's own evaluator default
END2END_MAX_BOXES = 1000  # an end-to-end graph returns at most this many boxes (Ultralytics: 300)


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def infer_head(shape: list) -> tuple[str, int]:
    """(head, class count) from the first output's (batch, a, b) shape; one clear line when it cannot tell."""
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise OrinflowError(f"the first output has shape {shape}; orinflow reads detector outputs of shape "
                            "(batch, a, b) with a and b fixed")
    a, b = shape[1], shape[2]
    if b == 6 and a <= END2END_MAX_BOXES:
        return "end2end", 0
    if a < b:  # (4 + nc, anchors): Ultralytics' anchor-free head
        return "yolov8", a - 4
    return "yolov5", b - 5  # (anchors, 5 + nc): the original YOLOv5 head


def check_head(head: str, shape: list) -> int:
    """The class count that `head` reads from `shape`, or one line saying that they contradict."""
    if head not in HEADS:
        raise OrinflowError(f"unknown --head {head!r}; choose one of {', '.join(HEADS)}")
    a, b = shape[1], shape[2]
    fits = {"yolov8": a > 4 and a < b, "yolov5": b > 5 and a > b, "end2end": b == 6}[head]
    if not fits:
        expected = {"yolov8": "(batch, 4 + classes, anchors)", "yolov5": "(batch, anchors, 5 + classes)",
                    "end2end": "(batch, boxes, 6)"}[head]
        raise OrinflowError(f"--head {head} expects an output of shape {expected}, but this model's is {shape}")
    return {"yolov8": a - 4, "yolov5": b - 5, "end2end": 0}[head]


def class_names(names: str | None, metadata: dict[str, str], count: int) -> dict[int, str]:
    """--names (a dataset YAML, or 'a,b,c'), else Ultralytics' metadata, else numbers; checked against `count`."""
    if names:
        if Path(names).suffix.lower() in (".yaml", ".yml"):
            try:
                value = yaml.safe_load(Path(names).read_text()).get("names")
            except (OSError, AttributeError, yaml.YAMLError) as e:
                raise OrinflowError(f"--names {names}: not a readable dataset YAML ({type(e).__name__})") from e
            found = dict(enumerate(value)) if isinstance(value, list) else {int(k): v for k, v in (value or {}).items()}
        else:
            found = dict(enumerate(n.strip() for n in names.split(",")))
    elif "names" in metadata:
        found = {int(k): v for k, v in ast.literal_eval(metadata["names"]).items()}
    else:
        found = {i: str(i) for i in range(count)}
    if count and len(found) != count:
        raise OrinflowError(f"the model predicts {count} classes but --names gives {len(found)}")
    return found


def adopt_onnx(model: str | Path, output: str | Path, head: str | None = None, names: str | None = None,
               imgsz: int | None = None) -> dict:
    """Write `output`: a copy of `model` with orinflow's processing metadata. Returns what was inferred."""
    from ..io import atomic_path, check_output, require_file, write_record

    source = require_file(model, "model")
    if source.suffix.lower() != ".onnx":
        raise OrinflowError(f"{source} is not ONNX: adopt takes an ONNX file from another exporter")
    check_output(output, (".onnx",), [source], command="adopt")
    try:
        graph = onnx.load(str(source))
    except Exception as e:
        raise OrinflowError(f"{source} is not a readable ONNX model ({type(e).__name__})") from e
    metadata = read_metadata(graph)
    if META_PROCESSING in metadata:
        raise OrinflowError(f"{source} already carries orinflow metadata; use it as it is")
    size = _input_size(graph, imgsz)
    shape = _dims(graph.graph.output[0])
    inferred, count = infer_head(shape) if head is None else (head, None)
    count = check_head(inferred, shape)
    processing = Processing(task="detect", imgsz=size, names=class_names(names, metadata, count),
                            head=HEADS[inferred], nms_iou=NMS_IOU[inferred])
    write_metadata(graph, {META_PROCESSING: processing.to_json(), META_FAMILY: f"onnx-{inferred}",
                           META_SOURCE: str(source)})
    with atomic_path(output) as tmp:
        onnx.save(graph, str(tmp))
    record = {"command": "adopt", "model": str(output), "source": str(source), "head": inferred,
              "head_given": head is not None, "imgsz": list(size), "classes": len(processing.names),
              "output_shape": shape}
    write_record(output, record)
    return record


def _input_size(graph: onnx.ModelProto, imgsz: int | None) -> tuple[int, int]:
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OrinflowError(f"the model has {len(inputs)} inputs; orinflow adopts single-image detectors")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] != 3:
        raise OrinflowError(f"the input has shape {dims}; orinflow adopts (batch, 3, height, width) images")
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0 and dims[3] > 0:
        if imgsz and (imgsz, imgsz) != (dims[2], dims[3]):
            raise OrinflowError(f"--imgsz {imgsz} contradicts the model's fixed input {dims[2]}x{dims[3]}")
        return dims[2], dims[3]
    if not imgsz:
        raise OrinflowError(f"the input's height and width are not fixed ({dims}): give the size with --imgsz")
    return imgsz, imgsz
