"""Instance segmentation: masks made and scored as Ultralytics' segmentation validator makes and scores them
(checked against its own functions on perturbed ground truth, no trained model needed), a seg model through
export and evaluation, and polygon labels' bad-input rules."""
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_path
from tests_helpers import confident_untrained_export
from orinflow.errors import OrinflowError
from orinflow.tasks.ap import IOU_THRESHOLDS, ap_per_class, match_by_iou
from orinflow.tasks.image import letterbox_image
from orinflow.tasks.masks import label_masks, mask_iou, prototype_masks, resample

os.environ.setdefault("YOLO_OFFLINE", "1")
IMGSZ = (256, 256)
GRID = (64, 64)


def star(rng, cx, cy, radius, points=9):
    """A random star-shaped polygon (normalised), clipped to the image."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.5, 1.0, points)
    return np.clip(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1), 0, 1).astype(np.float32)


def scene(seed: int):
    """An image size, its letterbox meta, and a few overlapping polygons with classes."""
    rng = np.random.default_rng(seed)
    h0, w0 = int(rng.integers(120, 400)), int(rng.integers(120, 400))
    _, meta = letterbox_image(np.zeros((h0, w0, 3), np.uint8), IMGSZ)
    count = int(rng.integers(2, 7))
    polygons = [star(rng, *rng.uniform(0.2, 0.8, 2), rng.uniform(0.08, 0.3)) for _ in range(count)]
    return meta, polygons, rng.integers(0, 3, count)


def ultralytics_label_masks(polygons, meta):
    """Ultralytics' own path: resample normalised polygons, map them into the letterboxed input, overlap masks."""
    from ultralytics.data.utils import polygons2masks_overlap
    from ultralytics.utils.ops import resample_segments

    h0, w0 = meta.original_hw
    segments = resample_segments([p.copy() for p in polygons], n=1000)
    pixels = [np.stack([s[:, 0] * w0 * meta.scale + meta.pad[0], s[:, 1] * h0 * meta.scale + meta.pad[1]], 1)
              for s in segments]
    owner, order = polygons2masks_overlap(IMGSZ, pixels, downsample_ratio=IMGSZ[0] // GRID[0])
    masks = np.zeros((len(polygons), *GRID), bool)
    for rank, index in enumerate(order):
        masks[index] = owner == rank + 1
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_label_masks_are_ultralytics_overlap_masks(seed):
    meta, polygons, _ = scene(seed)
    mine, theirs = label_masks(polygons, meta, IMGSZ, GRID), ultralytics_label_masks(polygons, meta)
    assert mine.shape == theirs.shape
    assert (mine != theirs).mean() < 0.002  # float rounding may move a pixel on an edge, nothing more


def test_prototype_masks_are_ultralytics_process_mask():
    from ultralytics.utils.ops import process_mask

    gen = torch.Generator().manual_seed(0)
    protos, coefficients = torch.randn(8, *GRID, generator=gen), torch.randn(5, 8, generator=gen)
    corners = torch.rand(5, 2, generator=gen) * 150
    boxes = torch.cat([corners, corners + 20 + torch.rand(5, 2, generator=gen) * 80], 1)
    theirs = process_mask(protos, coefficients, boxes, IMGSZ).numpy().astype(bool)
    assert np.array_equal(prototype_masks(protos, coefficients, boxes, IMGSZ), theirs)
    assert prototype_masks(protos, coefficients[:0], boxes[:0], IMGSZ).shape == (0, *GRID)


def perturbed(gt: np.ndarray, classes: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions made from labels: shifted, eroded, dropped, duplicated and wrong-class instances, scored."""
    masks, scores, labels = [], [], []
    kernel = np.ones((3, 3), np.uint8)
    for mask, cls in zip(gt, classes):
        roll = rng.random()
        if roll < 0.15:
            continue  # dropped: a missed object
        shifted = np.roll(mask, tuple(rng.integers(-2, 3, 2)), (0, 1))
        if roll < 0.5:
            shifted = cv2.erode(shifted.astype(np.uint8), kernel).astype(bool)
        masks.append(shifted), scores.append(rng.uniform(0.3, 1)), labels.append(cls)
        if roll > 0.8:  # a duplicate, less confident
            masks.append(np.roll(shifted, 2, 1)), scores.append(rng.uniform(0.01, 0.3)), labels.append(cls)
        if roll > 0.9:  # the right place, the wrong class
            masks.append(mask), scores.append(rng.uniform(0.01, 0.5)), labels.append((cls + 1) % 3)
    return np.asarray(masks, bool).reshape(-1, *GRID), np.asarray(scores, np.float32), np.asarray(labels, int)


def test_mask_map_matches_ultralytics_on_perturbed_ground_truth():
    """The same labels and predictions through orinflow's matching and AP and through Ultralytics' validator
    functions: identical mask IoU and true positives at every threshold. The AP of those true positives is
    the detector's (validated against YOLOv5's val.py); Ultralytics 8.4 ends each precision curve at zero after
    the last recall where orinflow draws the line to (1, 0), as YOLOv5 and earlier Ultralytics do
    (docs/accuracy.md), so its AP reads lower where recall stops short, never higher."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class as ultralytics_ap
    from ultralytics.utils.metrics import mask_iou as ultralytics_mask_iou

    validator = BaseValidator.__new__(BaseValidator)
    validator.iouv, validator.args = torch.tensor(IOU_THRESHOLDS, dtype=torch.float32), type("A", (), {})()
    rng = np.random.default_rng(0)
    stats, theirs, targets = [], [], []
    for seed in range(12):
        meta, polygons, classes = scene(seed)
        gt = label_masks(polygons, meta, IMGSZ, GRID)
        pred, scores, labels = perturbed(gt, classes, rng)
        iou = ultralytics_mask_iou(torch.tensor(gt.reshape(len(gt), -1), dtype=torch.float32),
                                   torch.tensor(pred.reshape(len(pred), -1), dtype=torch.float32))
        assert np.allclose(mask_iou(gt, pred), iou.numpy(), atol=1e-5)
        tp = validator.match_predictions(torch.tensor(labels), torch.tensor(classes), iou).numpy()
        mine = match_by_iou(mask_iou(gt, pred), classes, labels, scores)
        assert np.array_equal(mine, tp), seed
        stats.append((mine, scores, labels)), theirs.append(tp), targets.append(classes)
    tp, conf, pred_cls = (np.concatenate(x) for x in zip(*stats))
    target = np.concatenate(targets)
    mine_ap = ap_per_class(tp, conf, pred_cls, target)[1]
    their_ap = ultralytics_ap(tp, conf, pred_cls, target)[5]
    assert (their_ap <= mine_ap + 1e-9).all() and their_ap.mean() > 0.5 * mine_ap.mean()
    assert 0.2 < mine_ap.mean() < 0.95  # the perturbations leave a metric that can move either way


def test_resampling_keeps_the_outline():
    square = np.float32([[0, 0], [10, 0], [10, 10], [0, 10]])
    dense = resample(square, 100)
    assert len(dense) == 100 and {tuple(p) for p in square} <= {tuple(p) for p in dense}
    assert dense[:, 0].min() == 0 and dense[:, 0].max() == 10


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    """Four images of filled shapes with their polygon labels (Ultralytics' layout)."""
    root = tmp_path_factory.mktemp("segdata")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        image = np.full((96, 128, 3), 40, np.uint8)
        lines = []
        for cls in range(2):
            polygon = star(rng, *rng.uniform(0.3, 0.7, 2), 0.2)
            cv2.fillPoly(image, [(polygon * [128, 96]).astype(np.int32)], (200, 60 + 100 * cls, 90))
            lines.append(f"{cls} " + " ".join(f"{v:.4f}" for v in polygon.reshape(-1)))
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), image)
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    names = ", ".join(str(i) for i in range(80))  # the untrained YAML model's 80 numbered classes
    (root / "seg.yaml").write_text(f"train: images\nval: images\nnames: [{names}]\n")
    return root / "seg.yaml"


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory):
    return confident_untrained_export("yolov8n-seg.yaml", tmp_path_factory.mktemp("segonnx"))


def test_a_seg_model_exports_both_outputs_and_evaluates_alike(seg_onnx, seg_data):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.models import load_model

    adapter, record = seg_onnx
    assert record["task"] == "segment" and len(record["parity"]["outputs"]) == 2
    graph = load_model(record["model"])
    assert graph.task == "segment" and graph.processing.room.outputs == 2
    options = EvalOptions(measure_latency=False, conf=0.0001)
    torch_run, onnx_run = (evaluate_model(m, seg_data, options=options) for m in (adapter, graph))
    for key in ("mAP50-95", "mask_mAP50", "mask_mAP50-95"):
        assert key in onnx_run["metrics"] and abs(torch_run["metrics"][key] - onnx_run["metrics"][key]) < 0.01
    with pytest.raises(OrinflowError, match="--nms is for detectors"):
        from orinflow.export.nms import NmsSpec, attach_nms
        import onnx

        attach_nms(onnx.load(record["model"]), graph.processing, NmsSpec())


def test_a_result_describes_masks_as_polygons_in_image_pixels(seg_onnx):
    adapter, _ = seg_onnx
    processing = adapter.processing
    image = np.zeros((48, 64, 3), np.uint8)
    x, meta = processing.preprocess(image)
    protos = np.full((1, 4, 32, 32), -1.0, np.float32)
    protos[0, 0, 8:24, 8:24] = 1.0  # prototype 0 covers the centre of the input
    rows = np.zeros((1, 4 + len(processing.names) + 4, 1), np.float32)
    rows[0, :4, 0] = [64, 64, 80, 80]  # a box over the centre
    rows[0, 4, 0], rows[0, -4, 0] = 0.9, 5.0
    result = processing.read([rows, protos], [meta], conf=0.25)[0]
    assert result.masks.shape == (1, 32, 32) and result.masks[0, 8:24, 8:24].all()
    described = processing.room.describe(result, processing.names)["detections"][0]
    xs = [p[0] for polygon in described["polygons_xy"] for p in polygon]
    assert described["score"] == pytest.approx(0.9) and min(xs) >= 0 and max(xs) <= 64
    assert result.image_masks().shape == (1, 48, 64)


@pytest.mark.parametrize("line, problem", [
    ("0 0.1 0.1 0.5 0.1 nan 0.5", "NaN or infinite"),
    ("0 0.1 0.1 0.5 0.1 1.5 0.5", "normalised to 0..1"),
    ("0 0.1 0.1 0.5 0.1 0.5", "6 columns"),
])
def test_a_bad_polygon_names_the_file_and_line(tmp_path, line, problem):
    from orinflow.data import load_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n" + line + "\n")
    (tmp_path / "d.yaml").write_text("val: images\nnames: [a]\n")
    with pytest.raises(OrinflowError, match=rf"a\.txt, line 2: .*{problem}"):
        load_dataset(tmp_path / "d.yaml")


def test_yolov8n_seg_mask_metric_matches_ultralytics_validator():
    """The real yolov8n-seg on coco-val-dev-seg: orinflow's mask mAP against Ultralytics' validator at the same
    square 640 input (rect=False, batch 1; its default rectangular batches feed other shapes)."""
    weights = shared_path("weights", "yolov8n-seg.pt")
    data = shared_path("data", "coco-val-dev-seg", "coco-val-dev-seg.yaml")
    from ultralytics import YOLO

    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.models import load_model

    theirs = YOLO(str(weights)).val(data=str(data), imgsz=640, batch=1, rect=False, device="cpu", plots=False,
                                    verbose=False, workers=0)
    mine = evaluate_model(load_model(weights), data, options=EvalOptions(measure_latency=False, batch=4))["metrics"]
    assert abs(mine["mask_mAP50"] - theirs.seg.map50) <= 0.005
    assert abs(mine["mask_mAP50-95"] - theirs.seg.map) <= 0.005


def test_the_bundles_infer_gives_evaluates_masks(seg_onnx, seg_data, tmp_path):
    """infer.py of a deployed seg model: the boxes, classes, scores and mask polygons `evaluate` reads, and the
    same mask mAP from --eval."""
    import json

    from test_deploy import run_infer

    from orinflow.data import load_dataset
    from orinflow.deploy.bundle import write_bundle
    from orinflow.deploy.trtexec import BuildOptions
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.evaluate.accuracy import predictions
    from orinflow.models import load_model
    from orinflow.runtime import OrtRunner

    onnx_path = seg_onnx[1]["model"]
    bundle = tmp_path / "bundle"
    write_bundle(onnx_path, bundle, BuildOptions())
    images = load_dataset(seg_data).images
    result = run_infer(bundle, "--conf", "0.001", "--json", tmp_path / "out.json", *images)
    assert result.returncode == 0, result.stderr
    model = load_model(onnx_path)
    expected = {i: d for i, _, d in predictions(OrtRunner(onnx_path), model.processing, images, conf=0.001)}
    got = json.loads((tmp_path / "out.json").read_text())
    assert sum(len(item["detections"]) for item in got) > 0
    for index, item in enumerate(got):
        assert [d["class"] for d in item["detections"]] == expected[index].classes.tolist()
        assert np.allclose([d["score"] for d in item["detections"]], expected[index].scores, atol=1e-6)
        assert [d["polygons_xy"] for d in item["detections"]] == expected[index].polygons
    result = run_infer(bundle, "--eval", seg_data)
    assert result.returncode == 0, result.stderr
    on_device = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]
    desktop = evaluate_model(model, seg_data, options=EvalOptions(measure_latency=False))["metrics"]
    assert on_device["mask_mAP50-95"] == pytest.approx(desktop["mask_mAP50-95"], abs=1e-9)


def test_adopt_reads_a_foreign_seg_graph_as_segmentation(seg_onnx, tmp_path):
    """A seg graph without orinflow's metadata (as another exporter writes it): its second output of prototypes
    makes it a segmentation model, and the 32 coefficients are not counted as classes."""
    import onnx

    from orinflow.models import load_model
    from orinflow.models.adopt import adopt_onnx

    graph = onnx.load(seg_onnx[1]["model"])
    del graph.metadata_props[:]
    onnx.save(graph, tmp_path / "foreign.onnx")
    record = adopt_onnx(tmp_path / "foreign.onnx", tmp_path / "adopted.onnx")
    assert record["task"] == "segment" and record["classes"] == 80 and record["head"] == "yolov8"
    assert load_model(tmp_path / "adopted.onnx").processing.room.outputs == 2


@pytest.fixture(scope="module")
def seg_int8(seg_onnx, seg_data, tmp_path_factory):
    from orinflow.api import quantize

    output = tmp_path_factory.mktemp("segint8") / "int8.onnx"
    return quantize(seg_onnx[1]["model"], data=seg_data, num_images=4, method="max", output=output,
                    say=lambda *a: None)


def test_quantize_keeps_the_box_decode_float_and_quantizes_the_mask_branch(seg_int8, seg_data):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.models import load_model

    report = seg_int8["qdq_report"]
    assert report["lint"] == [] and report["decode_nodes"] > 0 and report["decode_nodes_reading_quantized"] == []
    assert report["quantized_flop_share"] > 0.99  # the prototypes' convs and their upsampling are INT8 too
    metrics = evaluate_model(load_model(seg_int8["model"]), seg_data,
                             options=EvalOptions(measure_latency=False, int8_kernels="exact"))["metrics"]
    assert {"mAP50-95", "mask_mAP50-95"} <= set(metrics)


def test_compare_matches_instances_by_box_and_mask(seg_onnx, seg_int8, seg_data, tmp_path):
    from orinflow.api import compare

    record = compare(seg_onnx[1]["model"], seg_int8["model"], seg_data, images=4, conf=0.01, runtime_b="onnxruntime",
                     int8_kernels="exact", output=tmp_path / "cmp", say=lambda *a: None)
    tally = record["detections"]
    assert "mask differs" in tally["a_only"] and tally["a"] > 0
    assert sum(tally["a_only"].values()) == tally["a"] - tally["matched"]
    assert set(record["mAP"]["a"]) == {"mAP50", "mAP50-95", "mask_mAP50", "mask_mAP50-95"}


def test_the_selection_metric_is_one_the_task_reports(seg_onnx, seg_data, tmp_path):
    from orinflow.api import quantize

    with pytest.raises(OrinflowError, match="--select-metric top1: a segment model reports mask_mAP50-95"):
        quantize(seg_onnx[1]["model"], data=seg_data, num_images=4, max_drop=1.0, select_yaml=seg_data,
                 select_metric="top1", output=tmp_path / "x.onnx", say=lambda *a: None)
    assert not (tmp_path / "x.onnx").exists()


def coco_json_of(seg_yaml, rle_first: bool) -> tuple:
    """The seg data's polygon labels as a COCO instances JSON (pixels); the first object as RLE when asked."""
    import json

    from pycocotools import mask as rle_mask

    from orinflow.data import load_dataset

    data = load_dataset(seg_yaml)
    images, annotations = [], []
    for index, (path, labels, outlines) in enumerate(zip(data.images, data.labels, data.segments)):
        h, w = cv2.imread(str(path)).shape[:2]
        images.append({"id": index + 1, "file_name": path.name, "width": w, "height": h})
        for row, polygon in zip(labels, outlines):
            pixels = polygon * [w, h]
            segmentation = [pixels.reshape(-1).tolist()]
            if rle_first and not annotations:
                canvas = np.zeros((h, w), np.uint8)
                cv2.fillPoly(canvas, [pixels.astype(np.int32)], 1)
                encoded = rle_mask.encode(np.asfortranarray(canvas))
                segmentation = {"size": [h, w], "counts": encoded["counts"].decode()}
            box = [float(row[1] - row[3] / 2) * w, float(row[2] - row[4] / 2) * h, float(row[3]) * w, float(row[4]) * h]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(row[0]),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "segmentation": segmentation})
    categories = [{"id": i, "name": str(i)} for i in range(80)]
    return json.dumps({"images": images, "annotations": annotations, "categories": categories}), data


def made_predictions(data, imgsz=(128, 128)) -> list:
    """(index, meta, Segments) per image: each label's own mask on the prototype grid, a little shifted, scored."""
    from orinflow.tasks.boxes import labels_to_xyxy
    from orinflow.tasks.segment import Segments

    rng = np.random.default_rng(3)
    found = []
    for index, (path, labels, outlines) in enumerate(zip(data.images, data.labels, data.segments)):
        _, meta = letterbox_image(cv2.imread(str(path)), imgsz)
        masks = label_masks(outlines, meta, imgsz, (imgsz[0] // 4, imgsz[1] // 4))
        masks = np.stack([np.roll(m, int(rng.integers(-1, 2)), 1) for m in masks])
        found.append((index, meta, Segments(labels_to_xyxy(labels, meta.original_hw), rng.uniform(0.3, 1, len(labels)),
                                            labels[:, 0].astype(int), masks, meta, imgsz)))
    return found


def test_a_coco_json_with_polygons_or_rle_scores_as_the_yolo_polygons(seg_data, tmp_path):
    """The same predictions scored against the YOLO polygons and against a COCO JSON of them (polygons, then one
    object as RLE): the same mask mAP, and COCO's segm AP beside it."""
    from orinflow.data import load_coco_json, load_dataset
    from orinflow.evaluate.coco import CocoCollector, coco_metrics
    from orinflow.tasks import Scoring, task_room

    room, yolo = task_room("segment"), load_dataset(seg_data)
    predicted = made_predictions(yolo)
    collector = CocoCollector(yolo.names)
    reference = room.score(predicted, yolo, yolo.names, Scoring(coco=collector))
    segm = coco_metrics(collector.ground_truth(), collector.results, iou_type="segm")
    # COCO scores masks at image resolution, orinflow (as Ultralytics) on the prototype grid: both see them
    assert 0.2 < reference["mask_mAP50-95"] < 1 and 0.2 < segm["AP"] < reference["mask_mAP50-95"]
    for rle in (False, True):
        text, _ = coco_json_of(seg_data, rle)
        (tmp_path / "instances.json").write_text(text)
        coco = load_coco_json(tmp_path / "instances.json", yolo.images[0].parent)
        assert coco.task == "segment" and len(coco.segments) == len(yolo.images)
        metrics = room.score(made_predictions(coco), coco, coco.names, Scoring())
        tolerance = 0.03 if rle else 1e-9  # an RLE outline comes back through its contour
        assert abs(metrics["mask_mAP50-95"] - reference["mask_mAP50-95"]) <= tolerance


def test_a_bad_coco_segmentation_names_the_annotation(seg_data, tmp_path):
    import json

    from orinflow.data import load_coco_json

    text, data = coco_json_of(seg_data, False)
    coco = json.loads(text)
    coco["annotations"][2]["segmentation"] = [[1.0, 2.0, 3.0]]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(OrinflowError, match=r"bad\.json: annotations\[2\] has an invalid 'segmentation': a polygon"):
        load_coco_json(tmp_path / "bad.json", data.images[0].parent)


def test_what_segmentation_does_not_do_yet_is_refused_with_its_reason(seg_onnx):
    from orinflow.deploy.deepstream import infer_config
    from orinflow.optimize.train.config import QATConfig
    from orinflow.optimize.train.loop import check_trainable

    adapter = seg_onnx[0]
    with pytest.raises(OrinflowError, match="--mixup with the label loss of a segment model is not supported"):
        check_trainable(adapter, QATConfig(labels=True, mixup=True))
    with pytest.raises(OrinflowError, match="--deepstream: nvinfer reads a segment model only through a custom"):
        infer_config(adapter.processing, "int8", None, None, ["output0", "output1"])


def test_the_label_loss_is_ultralytics_segmentation_loss_on_the_polygons(seg_data):
    """One step of fine-tuning with labels: Ultralytics' v8SegmentationLoss on orinflow's mask targets, its mask
    term alive (it moves when the polygons move, and nothing else does)."""
    from orinflow.api import load
    from orinflow.data import load_dataset
    from orinflow.models.base import RawOutput
    from orinflow.optimize.train.config import QATConfig
    from orinflow.optimize.train.loop import batches, check_trainable
    from orinflow.optimize.train.objective import Objective

    torch.manual_seed(0)
    adapter, data = load("yolov8n-seg.yaml", imgsz=128, fuse=False), load_dataset(seg_data)
    config = QATConfig(labels=True, distill=False)
    check_trainable(adapter, config, data)
    objective = Objective(adapter, RawOutput(adapter.module), RawOutput(adapter.module), config)
    assert type(objective.detection_loss).__name__ == "UltralyticsSegmentationLoss"
    images, labels, metas, outlines = next(batches(data, adapter, [0, 1, 2, 3], 4))
    loss = objective(images, labels, metas, outlines)
    moved = [[np.clip(p + 0.15, 0, 1) for p in image] for image in outlines]
    assert torch.isfinite(loss) and loss > 0
    assert float(objective(images, labels, metas, outlines)) == pytest.approx(float(loss), rel=1e-6)
    assert float(objective(images, labels, metas, moved)) != pytest.approx(float(loss), rel=1e-5)
    objective.close()


@pytest.mark.parametrize("yaml_name", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
def test_other_ultralytics_seg_families_load_export_and_read(yaml_name, tmp_path):
    from orinflow.api import load
    from orinflow.export import export_onnx
    from orinflow.models import load_model
    from orinflow.runtime import OrtRunner

    torch.manual_seed(0)
    record = export_onnx(load(yaml_name, imgsz=128), tmp_path / "m.onnx").record
    graph = load_model(record["model"])
    assert graph.task == "segment" and len(record["parity"]["outputs"]) == 2
    x, meta = graph.processing.preprocess(np.zeros((96, 128, 3), np.uint8))
    result = graph.processing.read(OrtRunner(record["model"]).run(x[None]), [meta], conf=0.0)[0]
    assert result.masks.shape[1:] == (32, 32) and len(result.masks) == len(result.scores) > 0
