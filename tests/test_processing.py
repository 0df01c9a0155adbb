import numpy as np
import pytest
import torch

from orinflow.models.processing import (HEAD_ANCHOR_FREE, HEAD_OBJECTNESS, Processing, classify_transform,
                                        letterbox, unletterbox)


def test_letterbox_pads_centred_and_unletterbox_inverts():
    image = np.zeros((300, 600, 3), np.uint8)
    chw, meta = letterbox(image, (640, 640))
    assert chw.shape == (3, 640, 640) and chw.dtype == np.float32
    assert meta.scale == pytest.approx(640 / 600)
    assert meta.pad[0] == 0 and meta.pad[1] == pytest.approx((640 - 320) / 2, abs=1)
    assert chw[:, 0, 0] == pytest.approx(114 / 255)  # grey padding
    box = np.array([[10.0, 20.0, 300.0, 200.0]])
    mapped = box.copy()
    mapped[:, [0, 2]] = box[:, [0, 2]] * meta.scale + meta.pad[0]
    mapped[:, [1, 3]] = box[:, [1, 3]] * meta.scale + meta.pad[1]
    np.testing.assert_allclose(unletterbox(mapped, meta), box, atol=1e-4)


def test_letterbox_converts_bgr_to_rgb():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    chw, _ = letterbox(image, (64, 64))
    assert chw[2].mean() == pytest.approx(1.0) and chw[0].mean() == pytest.approx(0.0)


def test_classify_transform_normalises_and_crops():
    image = np.full((40, 80, 3), 255, np.uint8)
    chw, _ = classify_transform(image, (32, 32), 1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert chw.shape == (3, 32, 32)
    np.testing.assert_allclose(chw, 2.0, atol=1e-6)


def test_processing_json_roundtrip():
    p = Processing(task="detect", imgsz=(320, 256), names={0: "a", 5: "b"}, head=HEAD_OBJECTNESS, nms_iou=0.6)
    assert Processing.from_json(p.to_json()) == p


def test_postprocess_anchor_free_nms_keeps_best_of_overlaps():
    # Three anchors, two classes: two overlapping boxes of class 0, one separate of class 1.
    raw = torch.tensor([[[50, 52, 150], [50, 50, 150], [20, 20, 20], [20, 20, 20],
                         [0.9, 0.8, 0.0], [0.0, 0.0, 0.7]]], dtype=torch.float32)
    p = Processing(task="detect", imgsz=(200, 200), head=HEAD_ANCHOR_FREE)
    _, meta = letterbox(np.zeros((200, 200, 3), np.uint8), (200, 200))
    dets = p.postprocess(raw, [meta], conf=0.25, iou=0.5)[0]
    assert sorted(dets.classes.tolist()) == [0, 1]
    assert dets.scores.max() == pytest.approx(0.9)
    np.testing.assert_allclose(dets.boxes[dets.classes == 0][0], [40, 40, 60, 60])


def test_postprocess_objectness_multiplies_scores():
    raw = torch.tensor([[[100, 100, 40, 40, 0.5, 0.8, 0.1]]], dtype=torch.float32)
    p = Processing(task="detect", imgsz=(200, 200), head=HEAD_OBJECTNESS)
    _, meta = letterbox(np.zeros((200, 200, 3), np.uint8), (200, 200))
    dets = p.postprocess(raw, [meta], conf=0.01)[0]
    assert dets.scores.tolist() == pytest.approx([0.4, 0.05])
    assert dets.classes.tolist() == [0, 1]
