"""`compare`'s instances: one image's final detections of A and B matched (same class, box IoU >= 0.9, and the
task's own outline agreeing as well: mask IoU for segmentation, keypoint similarity for pose), every unmatched
one given its cause, and for pose the keypoint error of B against A on the matched persons."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.processing import NMS_INSIDE, Detections, ImageMeta, anchor_view, unletterbox
from ..tasks.boxes import box_iou

MATCH_IOU = 0.9
SHIFT_IOU = 0.5
BOX_CAUSES = ("score across threshold", "cut by pre-NMS top-k", "cut by keep-top-k", "NMS tie or order", "box shift",
              "class flip")


def causes(room) -> tuple[str, ...]:
    """The causes `compare` counts for a model of this task's room."""
    return BOX_CAUSES + ((room.outline_cause,) if room.outline_cause else ())


def new_tally(room) -> dict:
    tally = {"a": 0, "b": 0, "matched": 0, "a_only": dict.fromkeys(causes(room), 0),
             "b_only": dict.fromkeys(causes(room), 0)}
    if room.keypoints:
        tally["keypoints"] = {"persons": 0, "error_px_sum": None, "labelled": None, "oks_sum": 0.0}
    return tally


@dataclass
class Candidates:
    """A model's pre-NMS view of one image: per-anchor boxes (original pixels) and class scores."""

    boxes: np.ndarray
    scores: np.ndarray  # (anchors, classes)
    order: np.ndarray  # anchors by best class score, best first (the pre-NMS top-k's ranking)


def raw_candidates(raw: np.ndarray, head: str, meta: ImageMeta, imgsz, classes: int = 0) -> Candidates | None:
    """Every anchor of one image's raw head output, boxes mapped back to the image (None: NMS inside).
    `classes`: how many score columns are class scores (mask coefficients or keypoints may follow)."""
    import torch

    if head in NMS_INSIDE:
        return None
    boxes, scores = anchor_view(torch.as_tensor(np.asarray(raw, np.float32)), head, imgsz)
    scores = scores.numpy()[:, :classes or None]
    return Candidates(unletterbox(boxes.numpy(), meta), scores, np.argsort(-scores.max(1)))


def match(a: Detections, b: Detections, room) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """A's and B's detections without a same-class partner at IoU >= 0.9 (greedy by score), and the matched
    (A, B) pairs. The task's outline (mask, keypoints) must agree as well as the box."""
    iou = box_iou(a.boxes, b.boxes) if len(a.boxes) and len(b.boxes) else np.zeros((len(a.boxes), len(b.boxes)))
    iou = iou * (a.classes[:, None] == b.classes[None])
    outline = room.instance_similarity(a, b)
    if outline is not None:
        iou = np.minimum(iou, outline)
    taken, lost, pairs = set(), [], []
    for i in np.argsort(-a.scores):
        options = [(iou[i, j], j) for j in range(len(b.boxes)) if j not in taken and iou[i, j] >= MATCH_IOU]
        if options:
            taken.add(max(options)[1])
            pairs.append((int(i), max(options)[1]))
        else:
            lost.append(int(i))
    return lost, [j for j in range(len(b.boxes)) if j not in taken], pairs


def cause(box: np.ndarray, cls: int, other: Detections, other_all: Detections, candidates: Candidates | None,
          conf: float, limits: dict, room) -> str:
    """Why the other model has no same-class detection at IoU >= 0.9 for this one.

    `other`: its detections above `conf`; `other_all`: everything it kept; `candidates`: its pre-NMS anchors
    (None for a graph whose raw output cannot be read: then only the boxes speak).
    """
    iou = box_iou(box[None], other.boxes)[0] if len(other.boxes) else np.zeros(0)
    flipped = bool(np.any((iou >= MATCH_IOU) & (other.classes != cls)))
    shifted = bool(np.any((iou >= SHIFT_IOU) & (other.classes == cls)))
    if room.outline_cause and np.any((iou >= MATCH_IOU) & (other.classes == cls)):
        return room.outline_cause  # the same box and class: only the mask or the keypoints kept them apart
    if candidates is None or cls >= candidates.scores.shape[1]:
        return "class flip" if flipped else "box shift" if shifted else "NMS tie or order"
    near = box_iou(box[None], candidates.boxes)[0] >= MATCH_IOU
    scores = np.where(near, candidates.scores[:, cls], 0.0)
    if scores.max(initial=0.0) <= conf:  # the other model scores this class too low here
        return "class flip" if flipped else "box shift" if shifted else "score across threshold"
    pre_topk = limits.get("pre_topk")
    if pre_topk and pre_topk < len(candidates.boxes):
        kept = np.zeros(len(candidates.boxes), bool)
        kept[candidates.order[:pre_topk]] = True
        if not np.any(kept & (scores > conf)):
            return "cut by pre-NMS top-k"
    if len(other_all.scores) >= limits["keep_topk"] and scores.max() < float(other_all.scores.min()):
        return "cut by keep-top-k"
    return "box shift" if shifted else "NMS tie or order"


def above(dets: Detections | None, conf: float) -> Detections | None:
    if dets is None:
        return None
    return dets.take(dets.scores > conf)


def limits(side) -> dict:
    nms = side.nms or {}
    return {"pre_topk": nms.get("pre_topk"), "keep_topk": nms.get("keep_topk", 300)}


def attribute(index, path, kept, raws, sides, meta, conf, tally, examples, room) -> None:
    """Match one image's detections above `conf` and give every unmatched one its cause."""
    if kept[0] is None or kept[1] is None:
        return
    dets = [above(d, conf) for d in kept]
    tally["a"] += len(dets[0].scores)
    tally["b"] += len(dets[1].scores)
    lost_a, lost_b, pairs = match(dets[0], dets[1], room)
    tally["matched"] += len(pairs)
    if room.keypoints and pairs:
        add_keypoint_errors(tally["keypoints"], room, dets[0], dets[1], pairs)
    for mine, theirs, lost, raw, side, key in ((0, 1, lost_a, raws[1], sides[1], "a_only"),
                                               (1, 0, lost_b, raws[0], sides[0], "b_only")):
        processing = side.processing
        candidates = (raw_candidates(raw[0], side.nms["raw_head"] if side.nms else processing.head, meta,
                                     processing.imgsz, len(processing.names))
                      if raw is not None and processing is not None else None)
        for i in lost:
            box, cls = dets[mine].boxes[i], int(dets[mine].classes[i])
            why = cause(box, cls, dets[theirs], kept[theirs], candidates, conf, limits(side), room)
            tally[key][why] += 1
            examples.append({"image": str(path), "index": index, "only_in": "AB"[mine], "class": cls,
                             "score": float(dets[mine].scores[i]), "box": [round(float(v), 2) for v in box],
                             "cause": why})


def add_keypoint_errors(totals: dict, room, a, b, pairs: list[tuple[int, int]]) -> None:
    """Per keypoint, the pixel distance of B's point from A's over matched persons where A sees the point."""
    first, second = (np.array([p[k] for p in pairs]) for k in (0, 1))
    distance, seen = room.keypoint_errors(a.keypoints[first], b.keypoints[second])
    if totals["error_px_sum"] is None:
        totals["error_px_sum"], totals["labelled"] = [0.0] * distance.shape[1], [0] * distance.shape[1]
    totals["error_px_sum"] = [t + float(v) for t, v in zip(totals["error_px_sum"], (distance * seen).sum(0))]
    totals["labelled"] = [t + int(v) for t, v in zip(totals["labelled"], seen.sum(0))]
    totals["persons"] += len(pairs)
    totals["oks_sum"] += float(np.diag(room.instance_similarity(a.take(first), b.take(second))).sum())


def keypoint_summary(totals: dict) -> dict:
    """The record's keypoint figures: mean pixel error per keypoint (None where A never saw it), mean OKS."""
    if not totals["persons"]:
        return {"persons": 0, "error_px": [], "mean_oks": None}
    error = [round(s / n, 3) if n else None for s, n in zip(totals["error_px_sum"], totals["labelled"])]
    return {"persons": totals["persons"], "error_px": error, "mean_oks": totals["oks_sum"] / totals["persons"]}
