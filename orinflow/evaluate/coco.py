"""The COCO-standard detection metric (`--metric coco`), computed by a maintained COCO evaluation library.

Ground truth comes from the dataset's YOLO labels, converted to COCO format in memory, or from a
COCO JSON (`--coco-json`). YOLO labels carry boxes only, so an object's area for the small/medium/
large split is its box area (COCO's own annotations use the mask area, and mark crowd regions). Detections are the same post-NMS detections the YOLOv5-style metric
scores. COCO keeps the 100 most confident per image (maxDets); the YOLOv5-style metric keeps
--max-det. docs/accuracy.md explains how the two differ.
"""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np

from ..errors import OrinflowError

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LIBRARIES = ("faster-coco-eval", "pycocotools")
NAMED_IMAGE_IDS = 10**12  # ids of images whose file name is not a number


class CocoCollector:
    """Gathers ground truth and detections image by image, in COCO's formats.

    For a dataset read from a COCO JSON (`data.load_coco_json`) the JSON's own ground truth is used,
    with its image ids and category ids; otherwise the YOLO labels are converted.
    """

    def __init__(self, names: dict[int, str], source: dict | None = None):
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.results: list[dict] = []
        self.names, self.source = names, source

    def add(self, index: int, path: Path, hw: tuple[int, int], gt_boxes: np.ndarray, gt_classes: np.ndarray,
            dets, gt_outlines: list | None = None) -> None:
        """One image: its labels (boxes, classes, and for segmentation each object's polygons, normalised) and
        its detections (with `image_masks()` for segmentation: the COCO metric keeps the 100 most confident)."""
        if self.source is not None:
            image_id = self.source["image_ids"][index]
            category = self.source["category_ids"]
        else:  # COCO's own file names are the image id (000000000139.jpg), as YOLOv5's val.py reads them
            image_id = int(path.stem) if path.stem.isnumeric() else NAMED_IMAGE_IDS + len(self.images)
            category = None
            self._add_ground_truth(image_id, path.name, hw, gt_boxes, gt_classes, gt_outlines)
        masks = _rle_masks(dets) if hasattr(dets, "image_masks") else None
        for i, (box, score, cls) in enumerate(zip(dets.boxes, dets.scores, dets.classes)):
            found = {"image_id": image_id, "category_id": int(category[cls] if category else cls),
                     "score": float(score), "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                                     float(box[3] - box[1])]}
            if masks is not None and i in masks:
                found["segmentation"] = masks[i]
            self.results.append(found)

    def _add_ground_truth(self, image_id: int, file_name: str, hw, gt_boxes: np.ndarray, gt_classes,
                          outlines: list | None) -> None:
        self.images.append({"id": image_id, "file_name": file_name, "height": int(hw[0]), "width": int(hw[1])})
        for i, (box, cls) in enumerate(zip(gt_boxes, gt_classes)):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            found = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": int(cls),
                     "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0}
            if outlines is not None:  # COCO's area is the object's own (its mask), as in its annotations
                parts = outlines[i] if isinstance(outlines[i], list) else [outlines[i]]
                pixels = [part * np.float32([hw[1], hw[0]]) for part in parts]
                found["segmentation"] = [[float(v) for v in p.reshape(-1)] for p in pixels]
                found["area"] = float(sum(abs(_polygon_area(p)) for p in pixels))
            self.annotations.append(found)

    def ground_truth(self) -> dict:
        if self.source is not None:
            return self.source["ground_truth"]
        classes = sorted(set(self.names) | {a["category_id"] for a in self.annotations})
        return {"info": {}, "licenses": [], "images": self.images, "annotations": self.annotations,
                "categories": [{"id": c, "name": self.names.get(c, str(c))} for c in classes]}


def coco_metrics(ground_truth: dict, results: list[dict], library: str = "faster-coco-eval",
                 iou_type: str = "bbox") -> dict:
    """AP, AP50, AP75, APs, APm, APl and AR1/10/100 (and ARs/m/l) of `results` against `ground_truth`, by box
    IoU (`iou_type` "bbox") or mask IoU ("segm")."""
    if library not in LIBRARIES:
        raise OrinflowError(f"unknown COCO library {library!r}; choose one of {', '.join(LIBRARIES)}")
    if not results:  # both libraries refuse an empty result list; nothing detected scores zero
        return {key: 0.0 for key in COCO_KEYS} | {"library": library}
    # both libraries add fields to the dicts they are given: they get copies, with the fields `iou_type` reads
    ground_truth = copy.deepcopy(ground_truth)
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in copy.deepcopy(results)] \
        if iou_type == "bbox" else [r for r in copy.deepcopy(results) if "segmentation" in r]
    with contextlib.redirect_stdout(io.StringIO()):  # both print their summary table
        if library == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(ground_truth)
            evaluator = COCOeval_faster(gt, gt.loadRes(results), iouType=iou_type)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO()
            gt.dataset = ground_truth
            gt.createIndex()
            evaluator = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(v) for key, v in zip(COCO_KEYS, evaluator.stats)} | {"library": library}


COCO_MAX_DETS = 100  # the COCO evaluation reads at most this many detections per image


def _rle_masks(dets) -> dict[int, dict]:
    """The most confident instances' masks in image pixels, as COCO's compressed RLE, by instance index."""
    from faster_coco_eval.core import mask as rle_mask

    order = np.argsort(-dets.scores, kind="stable")[:COCO_MAX_DETS]
    found = {}
    for index, image in zip(order, dets.take(order).image_masks()):
        rle = rle_mask.encode(np.asfortranarray(image.astype(np.uint8)))
        found[int(index)] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return found


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
