"""`orinflow adopt`: give an ONNX detector, segmentation or pose model from elsewhere (Ultralytics' exporter, the
yolov5 repository, an end-to-end graph with NMS inside) the pre- and post-processing metadata orinflow reads.

What the graph says is taken from it: the input size from the input's shape, the head layout and class count
from the first output's shape, a segmentation model from a second output of mask prototypes (batch, k,
height/4, width/4), whose k mask coefficients end each row of the first; a pose model from its keypoint layout
(Ultralytics' metadata "kpt_shape", or --kpt-shape), whose keypoints end each row; and the class names from
Ultralytics' own metadata when present. The rest is asked for in one line. Preprocessing defaults to the
convention of the layout (the YOLO exporters': letterbox with grey 114, RGB, 0..1; YOLOX's: BGR, 0..255); the
flags --letterbox/--resize, --bgr/--rgb and --mean/--std say otherwise.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import OrinflowError
from .heads import check_head, class_names, detector_processing, infer_head
from .onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, graph_dims, read_metadata, write_metadata


def adopt_onnx(model: str | Path, output: str | Path, head: str | None = None, names: str | None = None,
               imgsz: int | None = None, letterbox: bool = True, bgr: bool | None = None, mean=None,
               std=None, kpt_shape: tuple[int, int] | None = None) -> dict:
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
    shape = graph_dims(graph.graph.output[0])
    if imgsz is not None:  # the size is the user's word, not the graph's: run the graph once at that size
        shape = _probe(graph, size, source)
    inferred = infer_head(shape, size) if head is None else head
    count = check_head(inferred, shape, size)
    prototypes = _prototypes(graph, size)
    kpt_shape = kpt_shape or _metadata_kpt_shape(metadata)
    extra = prototypes + (kpt_shape[0] * kpt_shape[1] if kpt_shape else 0)
    if kpt_shape and prototypes:
        raise OrinflowError(f"{source} has mask prototypes and keypoints: a model is one or the other")
    if kpt_shape and count - extra < 1:
        raise OrinflowError(f"{source}: kpt_shape {list(kpt_shape)} needs {extra} keypoint values per row, but its "
                            f"rows hold {count} values besides the box")
    task = "segment" if prototypes else "pose" if kpt_shape else "detect"
    processing = detector_processing(inferred, size, class_names(names, metadata, count - extra), letterbox, bgr,
                                     mean, std, task=task, kpt_shape=kpt_shape)
    write_metadata(graph, {META_PROCESSING: processing.to_json(), META_FAMILY: f"onnx-{inferred}",
                           META_SOURCE: str(source)})
    with atomic_path(output) as tmp:
        onnx.save(graph, str(tmp))
    record = {"command": "adopt", "model": str(output), "source": str(source), "head": inferred,
              "head_given": head is not None, "imgsz": list(size), "classes": len(processing.names),
              "task": processing.task, "kpt_shape": list(kpt_shape) if kpt_shape else None,
              "output_shape": shape, "input": processing.describe_input()}
    write_record(output, record)
    return record


def _metadata_kpt_shape(metadata: dict) -> tuple[int, int] | None:
    """The keypoint layout Ultralytics' exporter writes for a pose model ("kpt_shape": "[17, 3]"), if any."""
    import ast

    from ..tasks.keypoints import check_kpt_shape

    text = metadata.get("kpt_shape")
    if text is None:
        return None
    try:
        return check_kpt_shape(ast.literal_eval(text), "the model's metadata")
    except (ValueError, SyntaxError):
        raise OrinflowError(f"the model's metadata kpt_shape {text[:40]!r} is not [keypoints, 2 or 3]") from None


def _prototypes(graph: onnx.ModelProto, size: tuple[int, int]) -> int:
    """How many mask prototypes a second output of shape (batch, k, height/4, width/4) holds; 0 without one."""
    if len(graph.graph.output) != 2:
        return 0
    dims = graph_dims(graph.graph.output[1])
    fixed = len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:])
    return dims[1] if fixed and tuple(dims[2:]) == (size[0] // 4, size[1] // 4) else 0


def _probe(graph: onnx.ModelProto, size: tuple[int, int], source: Path) -> list:
    """The first output's shape when the graph runs on one blank image of `size`; one line when it cannot."""
    import numpy as np
    import onnxruntime as ort

    initializers = {t.name for t in graph.graph.initializer}
    graph_input = next(i for i in graph.graph.input if i.name not in initializers)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
    try:
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        output = session.run(None, {graph_input.name: np.zeros((1, 3, *size), dtype)})[0]
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors have many types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OrinflowError(f"{source} does not run at {size[0]}x{size[1]} (--imgsz {size[0]}): {first}") from e
    return list(output.shape)


def _input_size(graph: onnx.ModelProto, imgsz: int | None) -> tuple[int, int]:
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OrinflowError(f"the model has {len(inputs)} inputs; orinflow adopts single-image detectors")
    dims = graph_dims(inputs[0])
    if len(dims) != 4 or dims[1] != 3:
        raise OrinflowError(f"the input has shape {dims}; orinflow adopts (batch, 3, height, width) images")
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0 and dims[3] > 0:
        if imgsz and (imgsz, imgsz) != (dims[2], dims[3]):
            raise OrinflowError(f"--imgsz {imgsz} contradicts the model's fixed input {dims[2]}x{dims[3]}")
        return dims[2], dims[3]
    if not imgsz:
        raise OrinflowError(f"the input's height and width are not fixed ({dims}): give the size with --imgsz")
    return imgsz, imgsz
