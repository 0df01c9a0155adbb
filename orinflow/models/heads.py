"""Detector output layouts by the names users know them by, read from (and checked against) output shapes.

Shared by `adopt` (ONNX from other exporters) and `--arch file.py:factory --head` (a user's own
detector module): both name the layout, or let it be read from the first output's shape.
"""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from ..errors import OrinflowError
from .processing import HEAD_ANCHOR_FREE, HEAD_END2END, HEAD_GRID, HEAD_OBJECTNESS, Processing, grid_cells

HEADS = {"yolov8": HEAD_ANCHOR_FREE, "yolov5": HEAD_OBJECTNESS, "yolox": HEAD_GRID, "end2end": HEAD_END2END}
NMS_IOU = {"yolov8": 0.7, "yolov5": 0.6, "yolox": 0.65, "end2end": 0.7}  # each family's own evaluator default
LAYOUTS = {"yolov8": "(batch, 4 + classes, anchors)", "yolov5": "(batch, anchors, 5 + classes)",
           "yolox": "(batch, grid cells of strides 8/16/32, 5 + classes)", "end2end": "(batch, boxes, 6)"}
END2END_MAX_BOXES = 1000  # an end-to-end graph returns at most this many boxes (Ultralytics: 300)
HEAD_HELP = ("Output layout: yolov8 (batch, 4+nc, anchors), yolov5 (batch, anchors, 5+nc; boxes decoded), yolox "
             "(batch, cells, 5+nc; YOLOX's default export, boxes relative to grid cells) or end2end (batch, boxes, 6)")


def _cell_count(imgsz: tuple[int, int]) -> int:
    return len(grid_cells(imgsz)[0])


def infer_head(shape: list, imgsz: tuple[int, int]) -> str:
    """The layout that the first output's (batch, a, b) shape shows; one clear line when it cannot tell."""
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise OrinflowError(f"the first output has shape {shape}; orinflow reads detector outputs of shape "
                            "(batch, a, b) with a and b fixed")
    a, b = shape[1], shape[2]
    if b == 6 and a <= END2END_MAX_BOXES:
        return "end2end"
    if a < b:  # (4 + nc, anchors): Ultralytics' anchor-free head
        return "yolov8"
    if a == _cell_count(imgsz):  # one row per grid cell: YOLOX, decoded or not (the shape cannot say)
        raise OrinflowError(f"the output {shape} has one row per grid cell: say --head yolox if its boxes are "
                            "relative to the cells (YOLOX's default export), --head yolov5 if they are decoded")
    return "yolov5"  # (anchors, 5 + nc): the original YOLOv5 head


def check_head(head: str, shape: list, imgsz: tuple[int, int]) -> int:
    """The class count that `head` reads from `shape`, or one line saying that they contradict."""
    if head not in HEADS:
        raise OrinflowError(f"unknown --head {head!r}; choose one of {', '.join(HEADS)}")
    fixed = len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape[1:])
    a, b = (shape[1], shape[2]) if fixed else (0, 0)
    fits = fixed and {"yolov8": 4 < a <= b, "yolov5": b > 5 and a > b, "end2end": b == 6,
                      "yolox": b > 5 and a == _cell_count(imgsz)}[head]
    if not fits:
        raise OrinflowError(f"--head {head} expects an output of shape {LAYOUTS[head]}, but this model's is {shape}"
                            f"{' at ' + str(imgsz[0]) + 'x' + str(imgsz[1]) if head == 'yolox' else ''}")
    return {"yolov8": a - 4, "yolov5": b - 5, "yolox": b - 5, "end2end": 0}[head]


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


def detector_processing(head: str, imgsz: tuple[int, int], names: dict[int, str], letterbox: bool = True,
                        bgr: bool | None = None, mean=None, std=None, task: str = "detect",
                        kpt_shape: tuple[int, int] | None = None) -> Processing:
    """The Processing of a detector with layout `head`. Unset input options take the layout's convention:
    YOLOX's own preprocessing is BGR 0..255; the YOLO exporters' is RGB 0..1. Both letterbox with grey 114."""
    yolox = head == "yolox"
    if yolox and mean is None and std is None:
        std = (1 / 255,) * 3
    return Processing(task=task, imgsz=tuple(imgsz), names=names, head=HEADS[head], nms_iou=NMS_IOU[head],
                      resize="letterbox" if letterbox else "stretch", channels="bgr" if (yolox if bgr is None else bgr)
                      else "rgb", mean=mean, std=std, kpt_shape=kpt_shape)
