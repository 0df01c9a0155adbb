"""Pose: keypoints scored as Ultralytics' pose validator scores them (checked against its own functions on
perturbed ground truth, no trained model needed), pose models from Ultralytics' YAMLs through export, quantize,
evaluate, compare and deploy, and keypoint labels' bad-input rules."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_path
from tests_helpers import confident_untrained_export
from orinflow.data import Dataset, load_dataset
from orinflow.errors import OrinflowError
from orinflow.tasks import Scoring, task_room
from orinflow.tasks.image import ImageMeta
from orinflow.tasks.keypoints import oks_sigmas
from orinflow.tasks.pose import Poses

os.environ.setdefault("YOLO_OFFLINE", "1")
BACKGROUND = 250  # low-scored predictions per image, as a validator at conf 0.001 and max_det 300 keeps
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def people(rng, count: int, kpt_shape) -> tuple[np.ndarray, np.ndarray]:
    """`count` labelled persons: (n, 5) YOLO rows and (n, K, 3) normalised keypoints inside each box, some
    unlabelled (visibility 0, at 0, 0 as COCO writes them; negative coordinates for 2-value layouts)."""
    k, dims = kpt_shape
    centres, sizes = rng.uniform(0.25, 0.75, (count, 2)), rng.uniform(0.1, 0.4, (count, 2))
    rows = np.concatenate([np.zeros((count, 1)), centres, sizes], 1).astype(np.float32)
    points = centres[:, None] + (rng.uniform(-0.5, 0.5, (count, k, 2)) * sizes[:, None])
    visibility = rng.choice([0.0, 1.0, 2.0], (count, k), p=[0.2, 0.2, 0.6])
    points[visibility == 0] = 0.0 if dims == 3 else -1.0
    if dims == 2:
        visibility = (visibility > 0).astype(np.float64)
    return rows, np.concatenate([points, visibility[..., None]], -1).astype(np.float32)


def perturbed_poses(rows, keypoints, hw, kpt_shape, rng) -> Poses:
    """Predictions made from labels: keypoints jittered by a known number of pixels, some persons missed, some
    duplicated less confidently, and the low-scored background a validator's conf 0.001 always leaves."""
    h, w = hw
    boxes, scores, points = [], [], []
    for row, person in zip(rows, keypoints):
        roll = rng.random()
        if roll < 0.15:
            continue  # a missed person
        cx, cy, bw, bh = row[1:] * [w, h, w, h]
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) + rng.normal(0, 2, 4)
        jitter = rng.choice([1.0, 4.0, 12.0])  # pixels: each person its own known error
        xy = person[:, :2] * [w, h] + rng.normal(0, jitter, (len(person), 2))
        boxes.append(box), scores.append(rng.uniform(0.3, 1.0)), points.append(xy)
        if roll > 0.85:  # a duplicate
            boxes.append(box + 3), scores.append(rng.uniform(0.05, 0.3)), points.append(xy + 6)
    for _ in range(BACKGROUND):
        corner = rng.uniform(0, 0.8, 2) * [w, h]
        boxes.append(np.concatenate([corner, corner + rng.uniform(5, 60, 2)]))
        scores.append(rng.uniform(0.001, 0.05)), points.append(rng.uniform(0, 1, (kpt_shape[0], 2)) * [w, h])
    points = np.asarray(points, np.float32)
    if kpt_shape[1] == 3:
        points = np.concatenate([points, np.ones((*points.shape[:2], 1), np.float32)], -1)
    return Poses(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.zeros(len(boxes), int), points)


def ultralytics_pose_stats(poses: Poses, rows, keypoints, hw, kpt_shape):
    """Box and pose true positives as Ultralytics' pose validator computes them, from its own functions."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import OKS_SIGMA, box_iou, kpt_iou
    from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

    validator = BaseValidator.__new__(BaseValidator)
    validator.iouv, validator.args = torch.linspace(0.5, 0.95, 10), type("A", (), {})()
    h, w = hw
    gt_boxes = xywh2xyxy(torch.tensor(rows[:, 1:] * [w, h, w, h], dtype=torch.float32))
    gt_points = torch.tensor(keypoints * [w, h, 1], dtype=torch.float32)
    pred_boxes, pred_points = torch.tensor(poses.boxes), torch.tensor(poses.keypoints)
    gt_cls, pred_cls = torch.tensor(rows[:, 0]), torch.tensor(poses.classes, dtype=torch.float32)
    sigma = OKS_SIGMA if list(kpt_shape) == [17, 3] else np.ones(kpt_shape[0]) / kpt_shape[0]
    area = xyxy2xywh(gt_boxes)[:, 2:].prod(1) * 0.53
    tp = validator.match_predictions(pred_cls, gt_cls, box_iou(gt_boxes, pred_boxes)).numpy()
    tp_p = validator.match_predictions(pred_cls, gt_cls, kpt_iou(gt_points, pred_points, area, sigma)).numpy()
    return tp, tp_p


@pytest.mark.parametrize("kpt_shape", [(17, 3), (5, 2)])
def test_pose_map_matches_ultralytics_validator_on_perturbed_ground_truth(kpt_shape):
    """orinflow's box and pose mAP against Ultralytics' validator functions (box_iou, kpt_iou with its sigmas,
    match_predictions, ap_per_class) on the same labels and predictions: the 17 COCO keypoints and a 5-point,
    2-value layout (equal sigmas). True positives are identical; the mAPs agree within 0.002. (Where recall stops
short, Ultralytics 8.4 ends the precision curve at 0 and orinflow draws it on to (1, 0), as YOLOv5 does: with
the low-scored tail every real evaluation has, the two differ by far less than that.)"""
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(0)
    images, labels, keypoints, results, theirs = [], [], [], [], []
    for index in range(16):
        hw = (int(rng.integers(200, 500)), int(rng.integers(200, 500)))
        rows, points = people(rng, int(rng.integers(1, 6)), kpt_shape)
        poses = perturbed_poses(rows, points, hw, kpt_shape, rng)
        images.append(f"{index}.jpg"), labels.append(rows), keypoints.append(points)
        results.append((index, ImageMeta(hw), poses))
        theirs.append((*ultralytics_pose_stats(poses, rows, points, hw, kpt_shape), poses.scores, poses.classes))
    data = Dataset("people", images, "pose", labels, {0: "person"}, keypoints=keypoints, kpt_shape=kpt_shape)
    room = task_room("pose")
    stats = [room.image_stats(poses, data, i, np.ones(len(labels[i]), bool), meta) for i, meta, poses in results]
    for (box, pose), (tp, tp_p, *_) in zip(stats, theirs):
        assert np.array_equal(box[0], tp) and np.array_equal(pose[0], tp_p)
    mine = room.score(results, data, {0: "person"}, Scoring())
    target = np.concatenate([r[:, 0] for r in labels])
    for position, prefix in ((0, ""), (1, "pose_")):
        tp, conf, cls = (np.concatenate([t[i] for t in theirs]) for i in (position, 2, 3))
        ap = ap_per_class(tp, conf, cls, target)[5]
        assert abs(mine[f"{prefix}mAP50"] - ap[:, 0].mean()) <= 0.002
        assert abs(mine[f"{prefix}mAP50-95"] - ap.mean()) <= 0.002
    assert 0.2 < mine["pose_mAP50-95"] < 0.9 and mine["pose_mAP50-95"] < mine["pose_mAP50"]


def test_larger_jitter_lowers_pose_map():
    """The metric moves with the keypoint error and nothing else: the same boxes, keypoints off by 2 pixels
    score higher than keypoints off by 20."""
    rng = np.random.default_rng(1)
    rows, points = people(rng, 4, (17, 3))
    hw = (400, 400)
    data = Dataset("people", ["a.jpg"], "pose", [rows], {0: "person"}, keypoints=[points], kpt_shape=(17, 3))
    figures = []
    for jitter in (2.0, 20.0):
        boxes = np.stack([(r[1:3] - r[3:] / 2) * 400 for r in rows])
        boxes = np.concatenate([boxes, boxes + rows[:, 3:] * 400], 1)
        xy = points[..., :2] * 400 + np.random.default_rng(2).normal(0, jitter, points[..., :2].shape)
        poses = Poses(boxes.astype(np.float32), np.linspace(0.9, 0.6, 4).astype(np.float32), np.zeros(4, int),
                      np.concatenate([xy, np.ones((4, 17, 1))], -1).astype(np.float32))
        figures.append(task_room("pose").score([(0, ImageMeta(hw), poses)], data, {0: "person"}, Scoring()))
    assert figures[0]["mAP50-95"] == figures[1]["mAP50-95"] > 0.9
    assert figures[0]["pose_mAP50-95"] > figures[1]["pose_mAP50-95"] + 0.2


def test_coco_sigmas_for_17_keypoints_and_equal_ones_otherwise():
    assert oks_sigmas((17, 3))[0] == pytest.approx(0.026) and oks_sigmas((17, 3))[11] == pytest.approx(0.107)
    assert np.allclose(oks_sigmas((5, 2)), 0.2)
    with pytest.raises(OrinflowError, match="5 positive values"):
        oks_sigmas((5, 2), [0.1, 0.2])


def write_pose_data(root, kpt_shape=(17, 3), flip=COCO_FLIP, images=4) -> Path:
    """`images` images of two bright figures each with their keypoints drawn, and YOLO pose labels."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for i in range(images):
        image = np.full((96, 128, 3), 40, np.uint8)
        lines = []
        for _ in range(2):
            cx, cy = rng.uniform(0.3, 0.7, 2)
            spread = rng.uniform(-1, 1, (kpt_shape[0], 2)) * [0.12, 0.25]
            points = np.array([cx, cy]) + spread
            corners = (np.array([[cx - 0.15, cy - 0.3], [cx + 0.15, cy + 0.3]]) * [128, 96]).astype(int)
            cv2.rectangle(image, tuple(corners[0].tolist()), tuple(corners[1].tolist()), (200, 120, 90), -1)
            for x, y in points:
                cv2.circle(image, (int(x * 128), int(y * 96)), 2, (255, 255, 255), -1)
            tail = " 2" if kpt_shape[1] == 3 else ""
            lines.append(f"0 {cx:.4f} {cy:.4f} 0.3 0.6 " + " ".join(f"{x:.4f} {y:.4f}{tail}" for x, y in points))
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), image)
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(root / "images" / "empty.jpg"), np.full((96, 128, 3), 40, np.uint8))  # no label file: no one
    flip_line = f"flip_idx: {list(flip)}\n" if flip else ""
    (root / "pose.yaml").write_text(f"train: images\nval: images\nkpt_shape: {list(kpt_shape)}\n{flip_line}"
                                    "names: [person]\n")
    return root / "pose.yaml"


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory):
    return write_pose_data(tmp_path_factory.mktemp("posedata"))


@pytest.fixture(scope="module")
def pose_onnx(tmp_path_factory):
    return confident_untrained_export("yolov8n-pose.yaml", tmp_path_factory.mktemp("poseonnx"))


def test_a_pose_model_exports_and_evaluates_alike(pose_onnx, pose_data):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.models import load_model

    adapter, record = pose_onnx
    assert record["task"] == "pose" and record["parity"]["output_shape"] == [1, 4 + 1 + 51, 336]
    graph = load_model(record["model"])
    assert graph.task == "pose" and graph.processing.kpt_shape == (17, 3) and len(graph.processing.names) == 1
    options = EvalOptions(measure_latency=False, conf=0.0001)
    torch_run, onnx_run = (evaluate_model(m, pose_data, options=options) for m in (adapter, graph))
    for key in ("mAP50-95", "pose_mAP50", "pose_mAP50-95"):
        assert abs(torch_run["metrics"][key] - onnx_run["metrics"][key]) < 0.01
    assert all("pose_mAP50-95" in row for row in onnx_run["metrics"]["per_class"].values())


def test_a_result_carries_keypoints_in_image_pixels(pose_onnx):
    processing = pose_onnx[0].processing
    _, meta = processing.preprocess(np.zeros((64, 128, 3), np.uint8))  # scale 1, 32 px of padding above
    rows = np.zeros((1, 4 + 1 + 51, 1), np.float32)
    rows[0, :4, 0] = [64, 64, 40, 40]
    rows[0, 4, 0] = 0.9
    rows[0, 5::3, 0], rows[0, 6::3, 0], rows[0, 7::3, 0] = 60.0, 70.0, 0.8
    result = processing.read([rows], [meta], conf=0.25)[0]
    assert result.keypoints.shape == (1, 17, 3)
    assert np.allclose(result.keypoints[0, :, :2], [60.0, 38.0]) and np.allclose(result.keypoints[0, :, 2], 0.8)
    described = processing.room.describe(result, processing.names)["detections"][0]
    assert described["keypoints"][0] == [60.0, 38.0, 0.8]


def test_adopt_reads_a_foreign_pose_graph_from_its_metadata_or_the_flag(pose_onnx, tmp_path):
    import onnx

    from orinflow.models import load_model
    from orinflow.models.adopt import adopt_onnx

    graph = onnx.load(pose_onnx[1]["model"])
    del graph.metadata_props[:]
    onnx.save(graph, tmp_path / "bare.onnx")
    onnx.helper.set_model_props(graph, {"task": "pose", "kpt_shape": "[17, 3]", "names": "{0: 'person'}"})
    onnx.save(graph, tmp_path / "ultralytics.onnx")  # what Ultralytics' exporter writes for a pose model
    record = adopt_onnx(tmp_path / "ultralytics.onnx", tmp_path / "a.onnx")
    assert record["task"] == "pose" and record["classes"] == 1
    assert load_model(tmp_path / "a.onnx").processing.kpt_shape == (17, 3)
    assert adopt_onnx(tmp_path / "bare.onnx", tmp_path / "b.onnx")["classes"] == 52  # unnamed: read as a detector
    assert adopt_onnx(tmp_path / "bare.onnx", tmp_path / "c.onnx", kpt_shape=(17, 3))["task"] == "pose"
    with pytest.raises(OrinflowError, match="needs 153 keypoint values per row"):
        adopt_onnx(tmp_path / "bare.onnx", tmp_path / "d.onnx", kpt_shape=(51, 3))
    assert not (tmp_path / "d.onnx").exists()


@pytest.fixture(scope="module")
def pose_int8(pose_onnx, pose_data, tmp_path_factory):
    from orinflow.api import quantize

    output = tmp_path_factory.mktemp("poseint8") / "int8.onnx"
    return quantize(pose_onnx[1]["model"], data=pose_data, num_images=4, method="max", output=output,
                    say=lambda *a: None)


def test_quantize_keeps_the_keypoint_decode_float(pose_int8, pose_data):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.models import load_model

    report = pose_int8["qdq_report"]
    assert report["lint"] == [] and report["decode_nodes"] > 30 and report["decode_nodes_reading_quantized"] == []
    assert report["quantized_flop_share"] > 0.99  # the keypoint branch's convolutions are INT8
    metrics = evaluate_model(load_model(pose_int8["model"]), pose_data,
                             options=EvalOptions(measure_latency=False, int8_kernels="exact"))["metrics"]
    assert {"mAP50-95", "pose_mAP50-95"} <= set(metrics)


def test_compare_matches_persons_by_box_and_keypoints(pose_onnx, pose_int8, pose_data, tmp_path):
    from orinflow.api import compare

    record = compare(pose_onnx[1]["model"], pose_int8["model"], pose_data, images=4, conf=0.01,
                     int8_kernels="exact", output=tmp_path / "cmp", say=lambda *a: None)
    tally = record["detections"]
    assert "keypoints differ" in tally["a_only"] and "mask differs" not in tally["a_only"] and tally["matched"] > 0
    assert sum(tally["a_only"].values()) == tally["a"] - tally["matched"]
    points = tally["keypoints"]
    assert points["persons"] == tally["matched"] and len(points["error_px"]) == 17 and 0.9 <= points["mean_oks"] <= 1
    assert set(record["mAP"]["a"]) == {"mAP50", "mAP50-95", "pose_mAP50", "pose_mAP50-95"}


def test_the_bundles_infer_gives_evaluates_keypoints(pose_onnx, pose_data, tmp_path):
    from test_deploy import run_infer

    from orinflow.deploy.bundle import write_bundle
    from orinflow.deploy.trtexec import BuildOptions
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.evaluate.accuracy import predictions
    from orinflow.models import load_model
    from orinflow.runtime import OrtRunner

    onnx_path = pose_onnx[1]["model"]
    bundle = tmp_path / "bundle"
    write_bundle(onnx_path, bundle, BuildOptions())
    images = load_dataset(pose_data).images
    result = run_infer(bundle, "--conf", "0.001", "--json", tmp_path / "out.json", *images)
    assert result.returncode == 0, result.stderr
    model = load_model(onnx_path)
    expected = {i: d for i, _, d in predictions(OrtRunner(onnx_path), model.processing, images, conf=0.001)}
    got = json.loads((tmp_path / "out.json").read_text())
    assert sum(len(item["detections"]) for item in got) > 0
    for index, item in enumerate(got):
        points = np.array([d["keypoints"] for d in item["detections"]]).reshape(-1, 17, 3)
        assert np.allclose(points, expected[index].keypoints, atol=1e-3)
    result = run_infer(bundle, "--eval", pose_data)
    assert result.returncode == 0, result.stderr
    on_device = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]
    desktop = evaluate_model(model, pose_data, options=EvalOptions(measure_latency=False))["metrics"]
    assert on_device["pose_mAP50-95"] == pytest.approx(desktop["pose_mAP50-95"], abs=1e-9)


@pytest.mark.parametrize("line, problem", [
    ("0 0.5 0.5 0.2 0.2 " + "0.5 0.5 2 " * 16, "56 needs|needs 56"),
    ("0 0.5 0.5 0.2 0.2 " + "0.5 0.5 2 " * 16 + "0.5 0.5 3", "visibility 3 is not 0"),
    ("0 0.5 0.5 0.2 0.2 " + "0.5 0.5 2 " * 16 + "nan 0.5 2", "NaN or infinite"),
    ("0 0.5 0.5 0.2 0.2 " + "0.5 0.5 2 " * 16 + "1.5 0.5 2", "normalised to 0..1"),
])
def test_a_bad_keypoint_row_names_the_file_and_line(tmp_path, line, problem):
    root = write_pose_data(tmp_path / "d", images=1)
    (root.parent / "labels" / "0.txt").write_text("0 0.5 0.5 0.2 0.2 " + "0.5 0.5 2 " * 17 + "\n" + line + "\n")
    with pytest.raises(OrinflowError, match=rf"0\.txt, line 2: .*({problem})"):
        load_dataset(root)


def test_bad_pose_settings_are_refused(pose_onnx, tmp_path):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.optimize.train.config import QATConfig
    from orinflow.optimize.train.loop import check_trainable

    five = write_pose_data(tmp_path / "five", kpt_shape=(5, 2), flip=None, images=1)
    assert load_dataset(five).keypoints[0].shape == (2, 5, 3)
    with pytest.raises(OrinflowError, match=r"predicts 17 keypoints \(kpt_shape \[17, 3\]\) but pose:val labels 5"):
        evaluate_model(pose_onnx[0], five, options=EvalOptions(measure_latency=False))
    (tmp_path / "five" / "odd.yaml").write_text((five.read_text() + "flip_idx: [0, 1, 2]\n"))
    with pytest.raises(OrinflowError, match="flip_idx must list each of the 5 keypoints once"):
        load_dataset(tmp_path / "five" / "odd.yaml")
    with pytest.raises(OrinflowError, match="--mixup with the label loss of a pose model"):
        check_trainable(pose_onnx[0], QATConfig(labels=True, mixup=True))
    with pytest.raises(OrinflowError, match="--flip with the pose label loss needs the data's flip_idx"):
        check_trainable(pose_onnx[0], QATConfig(labels=True, flip=True), load_dataset(five))
    from orinflow.deploy.deepstream import infer_config

    with pytest.raises(OrinflowError, match="--deepstream: nvinfer reads a pose model only through a custom"):
        infer_config(pose_onnx[0].processing, "int8", None, None, ["output0"])


def test_a_coco_keypoints_json_reads_as_the_yolo_labels(pose_data, tmp_path):
    from orinflow.data import load_coco_json

    data = load_dataset(pose_data)
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    images, annotations = [], []
    for index, (path, labels, points) in enumerate(zip(data.images, data.labels, data.keypoints)):
        h, w = cv2.imread(str(path)).shape[:2]
        images.append({"id": index + 1, "file_name": path.name, "width": w, "height": h})
        for row, person in zip(labels, points):
            box = [float(row[1] - row[3] / 2) * w, float(row[2] - row[4] / 2) * h, float(row[3]) * w, float(row[4]) * h]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "bbox": box,
                                "iscrowd": 0, "keypoints": (person * [w, h, 1]).reshape(-1).tolist(),
                                "num_keypoints": 17})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": names}]}
    (tmp_path / "kp.json").write_text(json.dumps(coco))
    read = load_coco_json(tmp_path / "kp.json", data.images[0].parent)
    assert read.task == "pose" and read.kpt_shape == (17, 3) and read.flip_idx == COCO_FLIP
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(read.keypoints, data.keypoints))
    coco["annotations"][1]["keypoints"][2] = 5
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(OrinflowError, match=r"bad\.json: annotations\[1\] has a keypoint visibility"):
        load_coco_json(tmp_path / "bad.json", data.images[0].parent)


def test_the_label_loss_is_ultralytics_pose_loss_on_the_keypoints(pose_data):
    """One step of fine-tuning with labels: Ultralytics' v8PoseLoss on orinflow's keypoint targets, its keypoint
    terms alive (the loss moves when the keypoints move, and not otherwise), mirrored images included."""
    from orinflow.api import load
    from orinflow.models.base import RawOutput
    from orinflow.optimize.train.config import QATConfig
    from orinflow.optimize.train.loop import batches, check_trainable
    from orinflow.optimize.train.objective import Objective

    torch.manual_seed(0)
    adapter, data = load("yolov8n-pose.yaml", imgsz=128, fuse=False), load_dataset(pose_data)
    config = QATConfig(labels=True, distill=False, flip=True)
    check_trainable(adapter, config, data)
    objective = Objective(adapter, RawOutput(adapter.module), RawOutput(adapter.module), config)
    objective.flip_idx = data.flip_idx
    assert type(objective.detection_loss).__name__ == "UltralyticsPoseLoss"
    images, labels, metas, points = next(batches(data, adapter, [0, 1, 2, 3], 4))
    state = objective.rng.bit_generator.state
    loss = objective(images, labels, metas, points)
    objective.rng.bit_generator.state = state
    assert torch.isfinite(loss) and loss > 0
    assert objective(images, labels, metas, points).item() == pytest.approx(loss.item(), rel=1e-6)
    objective.rng.bit_generator.state = state
    moved = [p + np.float32([0.05, 0.05, 0]) for p in points]
    assert objective(images, labels, metas, moved).item() != pytest.approx(loss.item(), rel=1e-5)
    objective.close()


def test_distillation_reads_the_keypoints():
    from orinflow.optimize.train.objective import distillation_loss

    torch.manual_seed(0)
    teacher = torch.rand(2, 4 + 1 + 51, 20) * 100
    teacher[:, 4] = 0.9
    student = teacher.clone()
    same = distillation_loss(student, teacher, "xywh_scores", 128, 1.0, kpt_shape=(17, 3))
    student[:, 5:7] += 10  # the first keypoint's x, y
    moved = distillation_loss(student, teacher, "xywh_scores", 128, 1.0, kpt_shape=(17, 3))
    assert float(moved) > float(same) + 1e-3


@pytest.mark.parametrize("yaml_name", ["yolo11n-pose.yaml", "yolo26n-pose.yaml"])
def test_other_ultralytics_pose_families_export_quantize_and_evaluate(yaml_name, pose_data, tmp_path):
    from orinflow.api import load, quantize
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.export import export_onnx
    from orinflow.models import load_model

    torch.manual_seed(0)
    record = export_onnx(load(yaml_name, imgsz=128), tmp_path / "m.onnx").record
    assert record["task"] == "pose"
    int8 = quantize(record["model"], data=pose_data, num_images=2, method="max", output=tmp_path / "q.onnx",
                    say=lambda *a: None)
    assert int8["qdq_report"]["lint"] == []
    metrics = evaluate_model(load_model(int8["model"]), pose_data, options=EvalOptions(
        measure_latency=False, int8_kernels="exact", class_map="0:0"))["metrics"]
    assert 0 <= metrics["pose_mAP50-95"] <= 1


def test_the_shared_pose_labels_read_as_their_readme_counts():
    """The real COCO keypoint sets: every row read and checked, as many persons as the data README states."""
    val = load_dataset(shared_path("data", "coco-val-dev-pose", "coco-val-dev-pose.yaml"))
    tune = load_dataset(shared_path("data", "coco-tune-pose", "coco-tune-pose.yaml"), "train")
    for data, images, persons in ((val, 214, 260), (tune, 661, 2481)):
        assert data.task == "pose" and data.kpt_shape == (17, 3) and data.flip_idx == COCO_FLIP
        assert sum(len(k) > 0 for k in data.keypoints) == images and sum(len(k) for k in data.keypoints) == persons
