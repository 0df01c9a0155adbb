"""Model preparation: load, adopt a foreign ONNX, export to ONNX, build a calibration set."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import DEFAULT_OPSET, calib_dir, workspace
from ..errors import OrinflowError
from .common import PathLike, Say, checked, locate, triple


@checked
def load(model: PathLike | None, *, arch: str | None = None, imgsz: int | None = None,
         mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
         crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
         names: str | None = None, fuse: bool = True):
    """Load any model orinflow takes: an Ultralytics/YOLOv5 .pt, an Ultralytics model YAML, an orinflow
    ONNX, or weights with `arch` (a classifier: torchvision name, file.py:func or package.module:func;
    a detector of your own: file.py:func with `head`).

    imgsz: input size (default 640 detectors, 224 classifiers; ONNX keeps its own).
    mean, std: input = (pixel/255 - mean) / std per channel ('r,g,b', fractions such as 1/255 allowed);
    default ImageNet for classifiers, 0 and 1 (0..1 pixels) for detectors. crop: classifier centre crop.
    modules: Python files defining classes the checkpoint pickles (a fork's own blocks).
    head: the output layout of an `arch` detector (yolov8, yolov5, yolox, end2end; see `adopt`); names: its
    classes (a dataset YAML or 'a,b,c'; default numbers). fuse=False keeps YOLO BatchNorm layers apart from
    their convs (as `prune` needs them).
    Returns a ModelAdapter (PyTorch) or an OnnxModel.
    """
    from ..models import load_model

    return load_model(model, arch=arch, imgsz=imgsz, mean=triple(mean, "--mean"), std=triple(std, "--std"),
                      crop_fraction=crop, modules=list(modules or []), head=head, names=names, fuse=fuse)


@checked
def adopt(model: PathLike, *, head: str | None = None, names: str | None = None, imgsz: int | None = None,
          letterbox: bool = True, bgr: bool | None = None, mean: str | Sequence[float] | None = None,
          std: str | Sequence[float] | None = None, kpt_shape: str | Sequence[int] | None = None,
          output: PathLike | None = None) -> dict:
    """Make an ONNX detector from another exporter (Ultralytics, the yolov5 repository, YOLOX, an end-to-end
    graph) usable by every command: writes a copy (default workspace/models/onnx/adopted/<name>.onnx) that
    carries orinflow's pre/post-processing metadata.

    head: yolov8 (batch, 4+nc, anchors), yolov5 (batch, anchors, 5+nc), yolox (batch, grid cells, 5+nc; boxes
    relative to the cells, YOLOX's default export) or end2end (batch, boxes, 6); default: read from the
    output's shape. names: a dataset YAML or 'a,b,c' (default: the exporter's metadata).
    imgsz: only for inputs without a fixed size. letterbox: keep the aspect and pad (False: stretch).
    bgr, mean, std: the input's channel order and (pixel/255 - mean) / std; default the layout's convention
    (RGB 0..1; yolox BGR 0..255, that is std 1/255). kpt_shape: a pose model's keypoints and values per keypoint
    ('17,3'; default: Ultralytics' metadata, which its exporter writes for pose models; none: not a pose model).
    """
    from ..models.adopt import adopt_onnx
    from ..tasks.keypoints import check_kpt_shape

    output = Path(output) if output else workspace() / "models" / "onnx" / "adopted" / Path(model).name
    return adopt_onnx(model, output, head=head, names=names, imgsz=imgsz, letterbox=letterbox, bgr=bgr,
                      mean=triple(mean, "--mean"), std=triple(std, "--std"),
                      kpt_shape=None if kpt_shape is None else check_kpt_shape(_integers(kpt_shape), "--kpt-shape"))


def _integers(value: str | Sequence[int]) -> list:
    """'17,3' or [17, 3] -> [17, 3] (what is not a whole number stays as it is, for the check to name)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [int(p) if str(p).strip().isdigit() else p for p in parts]


@checked
def export(model: PathLike, *, output: PathLike | None = None, opset: int = DEFAULT_OPSET, dynamic: bool = False,
           half: bool = False, simplify: bool = True, image: PathLike | None = None, nms: str | None = None,
           pre_topk: int = 30000, keep_topk: int = 300, iou: float | None = None, conf: float = 0.25,
           arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
           modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
           say: Say = print) -> dict:
    """Export a PyTorch model to ONNX (default workspace/models/onnx/raw/<name>_<imgsz>.onnx), simplify it,
    and check PyTorch against ONNX Runtime on a real image (`image`, default one of the demo recipe).

    nms: "onnx" (standard NonMaxSuppression, (batch, keep_topk, 6) output) or "trt" (TensorRT's EfficientNMS_TRT:
    num_dets, det_boxes, det_scores, det_classes) appends decode and NMS: `pre_topk` candidates by best class
    score, at most `keep_topk` detections per image, NMS IoU `iou` (default the family's), scores above `conf`
    (0.25 for deployment; 0.001 to measure mAP). The settings are stored in the model's metadata.
    """
    from ..data import read_image
    from ..export import check_opset, export_onnx
    from ..export.nms import NmsSpec
    from ..io import check_output

    check_opset(opset)
    model = locate(model, say)
    spec = NmsSpec(flavour=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf) if nms else None
    if spec is not None:
        spec.validate()
    if output is not None:
        check_output(output, (".onnx",), [model, image], command="export")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    if not hasattr(adapter, "module"):
        raise OrinflowError(f"{model} is already ONNX; export takes a PyTorch model")
    parity_image = read_image(Path(image)) if image else None
    return export_onnx(adapter, Path(output) if output else None, opset=opset, dynamic=dynamic, half=half,
                       simplify=simplify, parity_image=parity_image, nms=spec).record


@checked
def calibrate(model: PathLike | None, data: PathLike, *, split: str = "train", num_images: int = 512, seed: int = 0,
              output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None,
              std=None, crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
              names: str | None = None, say: Say = print) -> dict:
    """A calibration set (N,3,H,W float32 .npy, default workspace/calib/<model>_<data>_<split>_<N>.npy) of
    `num_images` images drawn with `seed` from `data`, preprocessed exactly as the model expects.

    model None (the original `orinflow-calibrate` without -m): the standard detector preprocessing (letterbox,
    RGB, 0..1) at `imgsz` (default 640), written to workspace/calib/<data>.npy. `quantize` refuses it for a
    model whose preprocessing differs (the record names the preprocessing used).
    """
    from ..data import load_dataset
    from ..data.calibration import build_calibration, save_calibration
    from ..io import check_output, write_record

    if num_images <= 0:
        raise OrinflowError("--num-images must be positive")
    model = locate(model, say)
    dataset = load_dataset(data, split)
    count = min(num_images, len(dataset))
    if model is None and any(v is not None for v in (arch, mean, std, crop, modules, head, names)):
        raise OrinflowError("without -m, calibrate uses the standard detector preprocessing: only --imgsz applies")
    default = (calib_dir() / f"{Path(data).stem}.npy" if model is None else
               calib_dir() / f"{Path(model).stem}_{Path(data).stem}_{split}_{count}.npy")
    output = Path(output) if output else default
    check_output(output, (".npy",), [model, data], command="calibrate")
    processing = (standard_detector_processing(imgsz) if model is None else
                  load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                       names=names).processing)
    array = build_calibration(processing, dataset, num_images, seed)
    save_calibration(array, output)
    record = {"command": "calibrate", "output": str(output), "model": None if model is None else str(model),
              "data": str(data), "split": split, "images": len(array), "seed": seed, "shape": list(array.shape),
              "processing": processing.to_json()}
    write_record(output, record)
    return record


def standard_detector_processing(imgsz: int | None):
    """The YOLO exporters' preprocessing (letterbox with grey 114, RGB, 0..1) at imgsz (default 640)."""
    from ..config import DEFAULT_DET_IMGSZ
    from ..models.processing import Processing

    size = imgsz or DEFAULT_DET_IMGSZ
    if size < 32 or size % 32:
        raise OrinflowError(f"--imgsz {size} must be a positive multiple of 32")
    return Processing(task="detect", imgsz=(size, size))
