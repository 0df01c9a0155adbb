"""A COCO instances JSON as a detection, segmentation or pose Dataset (`evaluate --coco-json --images`), every
entry checked. When every object carries `keypoints`, the Dataset is a pose set; when every object carries a
`segmentation` (polygons, or RLE), a segmentation set.

A malformed file is refused in one line that names the file and the entry (`images[3]`,
`annotations[17]`) and what is wrong with it, before any image is read. Images the JSON lists but the
folder lacks stop the run, or with `skip_missing` (`--skip-bad-images`) are left out, counted and
named in the record like unreadable images.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import OrinflowError
from .dataset import Dataset


def load_coco_json(annotations: str | Path, images: str | Path, skip_missing: bool = False) -> Dataset:
    """A detection dataset from a COCO instances JSON and its image folder.

    Class i is the i-th category id in ascending order (COCO's 80 classes in the usual order). Crowd
    regions leave the YOLO-style labels, as in every COCO-to-YOLO conversion; the COCO metric reads
    the JSON's own annotations, crowds and areas included (`Dataset.coco`). The Dataset's `missing` lists
    the images left out with `skip_missing`.
    """
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise OrinflowError(f"COCO JSON not found: {annotations}")
    if not images.is_dir():
        raise OrinflowError(f"--images {images} is not a folder")
    coco = _read(annotations)
    check = _Checker(annotations)
    categories = check.categories(coco["categories"])
    entries = check.images(coco["images"])
    boxes = check.annotations(coco.get("annotations", []), {e["id"] for e in entries}, set(categories))
    present = [e for e in entries if (images / e["file_name"]).is_file()]
    missing = [e["file_name"] for e in entries if e not in present]
    if not present:
        raise OrinflowError(f"none of the {len(entries)} images of {annotations} is in {images} (looked for "
                            f"{entries[0]['file_name'] if entries else 'no file names'})")
    if missing and not skip_missing:
        raise OrinflowError(f"{len(missing)} of the {len(entries)} images {annotations} lists are not in {images} "
                            f"(first: {missing[0]}); add them, or leave them out with --skip-bad-images")
    check.sizes(entries, present, images)
    class_of = {cat: i for i, cat in enumerate(sorted(categories))}
    kept = {e["id"] for e in present}
    objects = [[a for a in boxes[e["id"]] if not a.get("iscrowd", 0)] for e in present]
    labels = [_yolo_labels(found, e, class_of) for found, e in zip(objects, present)]
    if keypoint_set(objects):
        return _pose_dataset(annotations, images, coco, present, objects, class_of, categories, missing)
    outlined = all("segmentation" in a for found in objects for a in found) and any(objects)
    segments = [[_polygons(a["segmentation"], e) for a in found] for found, e in zip(objects, present)] \
        if outlined else []
    ground_truth = {"info": {}, "licenses": [], "images": present, "categories": coco["categories"],
                    "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in kept]}
    names = {class_of[cat]: name for cat, name in categories.items()}
    return Dataset(f"{annotations.stem}:{images.name}", [images / e["file_name"] for e in present],
                   "segment" if outlined else "detect", labels, names,
                   coco={"ground_truth": ground_truth, "category_ids": sorted(categories),
                         "image_ids": [e["id"] for e in present]},
                   missing=[str(images / name) for name in missing], segments=segments)


def keypoint_set(objects: list[list[dict]]) -> bool:
    """Every object carries `keypoints`: a person-keypoints JSON."""
    return any(objects) and all("keypoints" in a for found in objects for a in found)


def _pose_dataset(annotations: Path, images: Path, coco: dict, present: list, objects: list, class_of: dict,
                  categories: dict, missing: list) -> Dataset:
    """A pose Dataset: each object's keypoints normalised to its image. Objects with no labelled keypoint are
    left out, as in Ultralytics' COCO-pose labels and COCO's keypoint evaluation."""
    check = _Checker(annotations)
    count = check.keypoints(objects, coco.get("annotations", []))
    kept = [[a for a in found if any(v > 0 for v in a["keypoints"][2::3])] for found in objects]
    points = [np.asarray([a["keypoints"] for a in found], np.float32).reshape(-1, count, 3)
              / np.float32([e["width"], e["height"], 1]) for found, e in zip(kept, present)]
    names = {class_of[cat]: name for cat, name in categories.items()}
    return Dataset(f"{annotations.stem}:{images.name}", [images / e["file_name"] for e in present], "pose",
                   [_yolo_labels(found, e, class_of) for found, e in zip(kept, present)], names,
                   missing=[str(images / name) for name in missing], keypoints=points, kpt_shape=(count, 3),
                   flip_idx=mirror_twins(coco["categories"], count))


def mirror_twins(categories: list[dict], count: int) -> list[int] | None:
    """Each keypoint's left/right twin from the category's keypoint names (COCO's "left_eye"/"right_eye");
    None when the names do not pair up."""
    names = next((c["keypoints"] for c in categories if isinstance(c.get("keypoints"), list)), None)
    if names is None or len(names) != count or not all(isinstance(n, str) for n in names):
        return None
    index = {n: i for i, n in enumerate(names)}
    swap = {"left": "right", "right": "left"}
    twins = []
    for name in names:
        side = next((s for s in swap if name.startswith(s)), None)
        twins.append(index.get(swap[side] + name[len(side):], -1) if side else index[name])
    return twins if -1 not in twins and sorted(twins) == list(range(count)) else None


def _read(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise OrinflowError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:120]})") from e
    if not isinstance(coco, dict):
        raise OrinflowError(f"{path} is not a COCO instances JSON: its top level is a {type(coco).__name__}, "
                            "not an object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise OrinflowError(f"{path} is not a COCO instances JSON: '{key}' is missing or not a list")
    if not isinstance(coco.get("annotations", []), list):
        raise OrinflowError(f"{path}: 'annotations' is not a list")
    return coco


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
    """Each entry's fields, with an error that names the file and the entry."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str):
        raise OrinflowError(f"{self.path}: {where} {problem}")

    def entry(self, kind: str, index: int, item, fields: dict) -> None:
        if not isinstance(item, dict):
            self.fail(f"{kind}[{index}]", f"is a {type(item).__name__}, not an object")
        for field, rule in fields.items():
            if field not in item:
                self.fail(f"{kind}[{index}]", f"has no '{field}'")
            if not rule(item[field]):
                self.fail(f"{kind}[{index}]", f"has an invalid '{field}': {str(item[field])[:60]!r}")

    def unique(self, kind: str, index: int, value, seen: dict) -> None:
        if value in seen:
            self.fail(f"{kind}[{index}]", f"repeats id {value} of {kind}[{seen[value]}]")
        seen[value] = index

    def categories(self, items: list) -> dict[int, str]:
        seen: dict = {}
        for index, item in enumerate(items):
            self.entry("categories", index, item, {"id": _is_int})
            self.unique("categories", index, item["id"], seen)
        if not items:
            self.fail("categories", "is empty")
        return {item["id"]: str(item.get("name", item["id"])) for item in items}

    def images(self, items: list) -> list[dict]:
        seen: dict = {}
        positive = lambda v: _is_number(v) and v > 0  # noqa: E731
        names: dict = {}
        for index, item in enumerate(items):
            self.entry("images", index, item, {"id": _is_int, "file_name": lambda v: isinstance(v, str) and v != "",
                                               "width": positive, "height": positive})
            self.unique("images", index, item["id"], seen)
            if item["file_name"] in names:  # one file scored twice, under two ids
                self.fail(f"images[{index}]", f"repeats file_name {item['file_name']!r} of "
                          f"images[{names[item['file_name']]}]")
            names[item["file_name"]] = index
            if Path(item["file_name"]).is_absolute() or ".." in Path(item["file_name"]).parts:
                self.fail(f"images[{index}]", f"names a file outside --images: {item['file_name']!r}")
        return items

    def keypoints(self, objects: list[list[dict]], items: list) -> int:
        """Every object's `keypoints` is K x, y, v triples (finite, v 0, 1 or 2), K the same for all; returns K."""
        position = {id(item): index for index, item in enumerate(items)}
        count = None
        for item in (a for found in objects for a in found):
            where, values = f"annotations[{position[id(item)]}]", item["keypoints"]
            if not isinstance(values, list) or not values or len(values) % 3 or not all(map(_is_number, values)):
                self.fail(where, f"has an invalid 'keypoints': x, y, v triples of finite numbers expected, not "
                          f"{str(values)[:40]!r}")
            if count is not None and len(values) // 3 != count:
                self.fail(where, f"has {len(values) // 3} keypoints where the others have {count}")
            count = len(values) // 3
            if any(v not in (0, 1, 2) for v in values[2::3]):
                self.fail(where, "has a keypoint visibility that is not 0 (not labelled), 1 (hidden) or 2 (visible)")
        return count

    def sizes(self, entries: list[dict], present: list[dict], folder: Path) -> None:
        """Each image's width and height as the JSON states them, against the file's own (its header, read
        without decoding): boxes are mapped to the image through them, so a doubled or swapped size would score
        every box wrong with no error."""
        from PIL import Image

        for entry in present:
            try:
                with Image.open(folder / entry["file_name"]) as image:
                    width, height = image.size
            except Exception:  # an unreadable image is the evaluator's to report (or skip)
                continue
            if (width, height) != (entry["width"], entry["height"]):
                index = next(i for i, e in enumerate(entries) if e is entry)
                self.fail(f"images[{index}]", f"says {entry['width']}x{entry['height']} (width x height), but "
                          f"{entry['file_name']} is {width}x{height}")

    def annotations(self, items: list, image_ids: set, category_ids: set) -> dict[int, list]:
        boxes: dict[int, list] = {image: [] for image in image_ids}
        seen: dict = {}
        bbox = lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v))  # noqa: E731
        for index, item in enumerate(items):
            self.entry("annotations", index, item, {"image_id": _is_int, "category_id": _is_int, "bbox": bbox})
            if "id" in item:
                self.unique("annotations", index, item["id"], seen)
            if item["image_id"] not in image_ids:
                self.fail(f"annotations[{index}]", f"refers to image_id {item['image_id']}, which 'images' lacks")
            if item["category_id"] not in category_ids:
                self.fail(f"annotations[{index}]", f"has category_id {item['category_id']}, which 'categories' "
                          "lacks")
            if item["bbox"][2] < 0 or item["bbox"][3] < 0:
                self.fail(f"annotations[{index}]", f"has a box of negative size {item['bbox']}")
            if item.get("iscrowd", 0) not in (0, 1):
                self.fail(f"annotations[{index}]", f"has iscrowd {item['iscrowd']!r} (0 or 1)")
            if "segmentation" in item:
                problem = _segmentation_problem(item["segmentation"])
                if problem:
                    self.fail(f"annotations[{index}]", f"has an invalid 'segmentation': {problem}")
            boxes[item["image_id"]].append(item)
        return boxes


def _yolo_labels(annotations: list[dict], image: dict, class_of: dict[int, int]) -> np.ndarray:
    w, h = float(image["width"]), float(image["height"])
    rows = [[class_of[a["category_id"]], (a["bbox"][0] + a["bbox"][2] / 2) / w, (a["bbox"][1] + a["bbox"][3] / 2) / h,
             a["bbox"][2] / w, a["bbox"][3] / h] for a in annotations]
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _segmentation_problem(value) -> str | None:
    """What is wrong with an annotation's `segmentation` (polygons: lists of x, y pixel pairs, 3 points or
    more; RLE: {"size": [h, w], "counts": ...}), or None."""
    if isinstance(value, dict):
        size = value.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
            return f"an RLE needs 'size' [height, width], not {str(size)[:40]!r}"
        if not isinstance(value.get("counts"), (str, list)):
            return "an RLE needs 'counts' (a list of run lengths, or COCO's compressed string)"
        return None
    if not isinstance(value, list) or not value:
        return "polygons (a list of [x1, y1, x2, y2, ...] lists) or an RLE object expected"
    for part in value:
        if not isinstance(part, list) or len(part) < 6 or len(part) % 2 or not all(map(_is_number, part)):
            return f"a polygon is a list of 3 or more x, y pairs of finite numbers, not {str(part)[:40]!r}"
    return None


def _polygons(segmentation, image: dict) -> list[np.ndarray]:
    """An object's outline as polygons normalised to the image: its polygon parts, or the outer contours of its
    RLE mask."""
    w, h = float(image["width"]), float(image["height"])
    if isinstance(segmentation, list):
        return [np.asarray(part, np.float32).reshape(-1, 2) / np.float32([w, h]) for part in segmentation]
    import cv2
    from faster_coco_eval.core import mask as rle_mask

    rle = segmentation if isinstance(segmentation["counts"], str) else \
        rle_mask.frPyObjects(segmentation, *segmentation["size"])
    mask = rle_mask.decode(rle if isinstance(rle["counts"], bytes) else {**rle, "counts": rle["counts"].encode()})
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2).astype(np.float32) / np.float32([w, h]) for c in contours if len(c) >= 3]
