"""--metric coco: the COCO evaluation (faster-coco-eval), checked against pycocotools and against hand-made cases."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.evaluate.coco import COCO_KEYS, CocoCollector, coco_metrics
from orinflow.models.processing import Detections

runner = CliRunner()


def _one_image(pred_box, gt_box=(10.0, 20.0, 60.0, 100.0)):
    """One 200x200 image (its file name is its COCO id), one ground-truth box and one detection, xyxy pixels."""
    from pathlib import Path

    collector = CocoCollector({0: "thing"})
    dets = Detections(np.asarray([pred_box], np.float32), np.asarray([0.9], np.float32), np.asarray([0]))
    collector.add(0, Path("000000000139.jpg"), (200, 200), np.asarray([gt_box]), np.asarray([0]), dets)
    return collector


@pytest.mark.parametrize("library", ["faster-coco-eval", "pycocotools"])
def test_boxes_reach_the_library_in_coco_form(library):
    exact = _one_image((10.0, 20.0, 60.0, 100.0))
    assert coco_metrics(exact.ground_truth(), exact.results, library)["AP"] == pytest.approx(1.0)
    assert exact.results[0]["image_id"] == 139 and exact.results[0]["bbox"] == [10.0, 20.0, 50.0, 80.0]
    # IoU 0.6 (shifted 10 px of 50 across): a true positive at thresholds 0.50, 0.55 and 0.60 only
    shifted = _one_image((20.0, 20.0, 70.0, 100.0))
    iou = 40 * 80 / (60 * 80)
    expected = sum(iou >= t for t in np.linspace(0.5, 0.95, 10)) / 10
    assert coco_metrics(shifted.ground_truth(), shifted.results, library)["AP"] == pytest.approx(expected)


def test_cli_metric_coco_agrees_with_pycocotools_and_saves_results(demo_onnx, tiny_shapes, tmp_path):
    result = runner.invoke(app, ["evaluate", "-m", str(demo_onnx), "--yaml", str(tiny_shapes), "--runs", "0",
                                 "--metric", "coco", "--save-json", str(tmp_path / "dets.json"),
                                 "--json", str(tmp_path / "record.json")])
    assert result.exit_code == 0, result.output
    assert "COCO evaluation" in result.output
    record = json.loads((tmp_path / "record.json").read_text())
    coco = record["metrics"]["coco"]
    assert coco["library"] == "faster-coco-eval" and set(COCO_KEYS) <= set(coco)
    detections = json.loads((tmp_path / "dets.json").read_text())
    assert detections and all(set(d) == {"image_id", "category_id", "score", "bbox"} for d in detections)
    assert abs(coco["AP"] - record["metrics"]["mAP50-95"]) < 0.05
    from orinflow.report import write_report

    report = write_report([tmp_path / "record.json"], tmp_path / "report")["markdown"].read_text()
    assert "COCO AP" in report and f"{coco['AP']:.4f}" in report


def test_both_libraries_agree_on_the_demo_detector(fp32, tiny_shapes):
    from orinflow.data import load_dataset
    from orinflow.evaluate.accuracy import evaluate_detection
    from orinflow.runtime import OrtRunner

    collector = CocoCollector(fp32.processing.names)
    evaluate_detection(OrtRunner(fp32.path), fp32.processing, load_dataset(tiny_shapes, "val"), coco=collector)
    fast = coco_metrics(collector.ground_truth(), collector.results, "faster-coco-eval")
    reference = coco_metrics(collector.ground_truth(), collector.results, "pycocotools")
    assert all(abs(fast[k] - reference[k]) <= 1e-4 for k in COCO_KEYS), (fast, reference)


def _coco_twin(tiny_shapes, tmp_path):
    """The val split of the shapes data as a COCO instances JSON (sparse category ids 1, 3, 7, as COCO's are)."""
    import cv2

    from orinflow.data import load_dataset

    dataset = load_dataset(tiny_shapes, "val")
    ids = {0: 1, 1: 3, 2: 7}
    images, annotations = [], []
    for number, (path, labels) in enumerate(zip(dataset.images, dataset.labels), 1):
        h, w = cv2.imread(str(path)).shape[:2]
        images.append({"id": 1000 + number, "file_name": path.name, "width": w, "height": h})
        for cls, cx, cy, bw, bh in labels.tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": 1000 + number, "category_id": ids[int(cls)],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": ids[c], "name": dataset.names.get(c, str(c))} for c in sorted(ids)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, dataset.images[0].parent


def test_a_coco_json_scores_as_its_yolo_label_twin(demo_onnx, tiny_shapes, tmp_path):
    import orinflow

    annotations, folder = _coco_twin(tiny_shapes, tmp_path)
    twin = orinflow.evaluate(demo_onnx, tiny_shapes, runs=0, metric="coco", say=lambda m: None)["metrics"]
    mine = orinflow.evaluate(demo_onnx, coco_json=annotations, images=folder, runs=0, metric="coco",
                             save_json=tmp_path / "dets.json", say=lambda m: None)["metrics"]
    assert abs(mine["mAP50-95"] - twin["mAP50-95"]) <= 1e-4 and abs(mine["mAP50"] - twin["mAP50"]) <= 1e-4
    assert all(abs(mine["coco"][k] - twin["coco"][k]) <= 1e-4 for k in COCO_KEYS)
    detections = json.loads((tmp_path / "dets.json").read_text())
    assert {d["category_id"] for d in detections} <= {1, 3, 7} and min(d["image_id"] for d in detections) > 1000


def test_a_coco_json_whose_images_are_missing_is_refused(tiny_shapes, demo_onnx, tmp_path):
    annotations, _ = _coco_twin(tiny_shapes, tmp_path)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["evaluate", "-m", str(demo_onnx), "--coco-json", str(annotations), "--images",
                                 str(tmp_path / "empty"), "--runs", "0"])
    assert result.exit_code == 2 and "none of the" in result.stderr and result.stderr.count("\n") == 1


def _edited(source: Path, target: Path, edit) -> Path:
    coco = json.loads(source.read_text())
    edit(coco)
    target.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
    return target


MALFORMED = [
    ("duplicate-image-id", lambda c: c["images"][1].update(id=c["images"][0]["id"]), r"images\[1\] repeats id"),
    ("negative-box", lambda c: c["annotations"][2]["bbox"].__setitem__(2, -5.0), r"annotations\[2\] has a box of "
     "negative size"),
    ("unknown-image", lambda c: c["annotations"][0].update(image_id=99), r"annotations\[0\] refers to image_id 99"),
    ("unknown-category", lambda c: c["annotations"][1].update(category_id=99), r"annotations\[1\] has category_id 99"),
    ("no-categories", lambda c: c.pop("categories"), "'categories' is missing"),
    ("image-without-width", lambda c: c["images"][0].pop("width"), r"images\[0\] has no 'width'"),
    ("zero-height", lambda c: c["images"][0].update(height=0), r"images\[0\] has an invalid 'height'"),
    ("short-bbox", lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] has an invalid 'bbox'"),
    ("nan-bbox", lambda c: c["annotations"][0].update(bbox=[1, 2, float("nan"), 3]), r"annotations\[0\] has an "
     "invalid 'bbox'"),
    ("string-image-id", lambda c: c["images"][0].update(id="7"), r"images\[0\] has an invalid 'id'"),
    ("image-is-a-list", lambda c: c["images"].__setitem__(0, [1, 2]), r"images\[0\] is a list"),
    ("top-level-list", None, "top level is a list"),
    ("deep-nesting", None, "not readable JSON"),
    ("escaping-file-name", lambda c: c["images"][0].update(file_name="../../etc/passwd"), "outside --images"),
    # the size the JSON states maps every box to its image: a doubled or swapped one scored 0.0000 with exit 0
    ("doubled-size", lambda c: c["images"][2].update(width=2 * c["images"][2]["width"],
                                                     height=2 * c["images"][2]["height"]), r"images\[2\] says \d+x\d+"),
    ("swapped-size", lambda c: c["images"][1].update(width=c["images"][1]["height"] + 1,
                                                     height=c["images"][1]["width"]), r"images\[1\] says"),
    ("one-file-twice", lambda c: c["images"][3].update(file_name=c["images"][0]["file_name"]),
     r"images\[3\] repeats file_name"),
]


@pytest.mark.parametrize("name, edit, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_coco_json_names_the_file_and_the_entry(name, edit, message, tiny_shapes, tmp_path):
    from orinflow.data import load_coco_json

    annotations, folder = _coco_twin(tiny_shapes, tmp_path)
    bad = tmp_path / f"{name}.json"
    if name == "top-level-list":
        bad.write_text("[1, 2]")
    elif name == "deep-nesting":
        bad.write_text("[" * 100000 + "]" * 100000)
    else:
        _edited(annotations, bad, edit)
    with pytest.raises(OrinflowError, match=message) as raised:
        load_coco_json(bad, folder)
    assert str(bad) in str(raised.value)


def test_images_missing_from_the_folder_stop_the_run_or_are_counted_with_skip(demo_onnx, tiny_shapes, tmp_path):
    import shutil

    import orinflow

    annotations, folder = _coco_twin(tiny_shapes, tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    gone = sorted(partial.iterdir())[0]
    gone.unlink()
    result = runner.invoke(app, ["evaluate", "-m", str(demo_onnx), "--coco-json", str(annotations), "--images",
                                 str(partial), "--runs", "0"])
    assert result.exit_code == 2 and "1 of the" in result.stderr and gone.name in result.stderr
    record = orinflow.evaluate(demo_onnx, coco_json=annotations, images=partial, runs=0, skip_bad_images=True,
                               say=lambda m: None)
    assert record["skipped_images"] == [str(gone)] and record["images"] == len(list(partial.iterdir()))
    assert any("not in the folder" in note for note in record["notes"])
