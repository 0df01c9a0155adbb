import numpy as np
import pytest

from orinflow.evaluate.accuracy import average_precision, box_iou, detection_metrics, match_predictions
from orinflow.models.processing import Detections

GT = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
GT_CLS = np.array([0, 1])


def _metrics(dets):
    stats = [(match_predictions(dets, GT, GT_CLS), dets.scores, dets.classes)]
    return detection_metrics(stats, GT_CLS, {0: "a", 1: "b"})


def test_box_iou():
    assert box_iou(GT, GT).diagonal() == pytest.approx([1, 1])
    assert box_iou(GT[:1], np.array([[5, 0, 15, 10]], np.float32))[0, 0] == pytest.approx(50 / 150)


# 101-point interpolation with the trapezoid rule: a perfect class reads 0.995, as in YOLOv5/Ultralytics.
PERFECT = 0.995


def test_perfect_predictions_score_perfect():
    m = _metrics(Detections(GT.copy(), np.array([0.9, 0.8]), GT_CLS.copy()))
    assert m["mAP50"] == pytest.approx(PERFECT) and m["mAP50-95"] == pytest.approx(PERFECT)


def test_wrong_class_and_missing_predictions_score_zero():
    assert _metrics(Detections(GT.copy(), np.array([0.9, 0.8]), np.array([1, 0])))["mAP50"] == 0
    assert _metrics(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)))["mAP50-95"] == 0


def test_loose_box_counts_at_low_iou_only():
    loose = GT.copy()
    loose[0] = [0, 0, 10, 14]  # IoU 0.714 with its label
    m = _metrics(Detections(loose, np.array([0.9, 0.8]), GT_CLS.copy()))
    assert m["per_class"]["a"]["mAP50"] == pytest.approx(PERFECT)
    assert m["per_class"]["a"]["mAP50-95"] == pytest.approx(PERFECT * 0.5)  # thresholds 0.50..0.70 of 10
    assert m["per_class"]["b"]["mAP50-95"] == pytest.approx(PERFECT)


def test_duplicate_is_false_positive():
    dets = Detections(np.stack([GT[0], GT[0]]), np.array([0.9, 0.8]), np.array([0, 0]))
    correct = match_predictions(dets, GT, GT_CLS)
    assert correct[:, 0].tolist() == [True, False]


def test_average_precision_of_half_recall():
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.75, abs=0.01)


def test_each_label_keeps_its_most_confident_match_not_its_best_iou():
    """YOLOv5/Ultralytics rule: a confident box slightly off beats a low-score box that fits better."""
    gt = np.array([[0, 0, 100, 100]], np.float32)
    dets = Detections(np.array([[0, 0, 100, 80], [0, 0, 100, 99]], np.float32), np.array([0.9, 0.1]),
                      np.array([0, 0]))
    correct = match_predictions(dets, gt, np.array([0]))
    assert correct[0, 0] and not correct[1, 0]  # at IoU 0.5 the 0.9 box (IoU 0.80) is the true positive
    assert not correct[0, -1] and correct[1, -1]  # at IoU 0.95 only the 0.1 box (IoU 0.99) qualifies
