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


def test_stretch_resizes_without_padding_and_maps_boxes_back():
    p = Processing(task="detect", imgsz=(64, 64), head=HEAD_OBJECTNESS, resize="stretch")
    chw, meta = p.preprocess(np.full((100, 200, 3), 200, np.uint8))
    assert chw.shape == (3, 64, 64) and np.allclose(chw, 200 / 255)  # no grey border
    assert (meta.scale, meta.scale_y) == (pytest.approx(64 / 200), pytest.approx(64 / 100))
    box = np.array([[20.0, 10.0, 180.0, 90.0]])
    mapped = box * np.array([64 / 200, 64 / 100, 64 / 200, 64 / 100])
    np.testing.assert_allclose(unletterbox(mapped, meta), box, atol=1e-4)


def test_bgr_order_and_normalisation_follow_the_spec():
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    bgr = Processing(task="detect", imgsz=(32, 32), head=HEAD_OBJECTNESS, channels="bgr", std=(1 / 255,) * 3)
    chw, _ = bgr.preprocess(image)
    assert chw[0].mean() == pytest.approx(255.0) and chw[2].mean() == pytest.approx(0.0)  # raw 0..255, BGR kept
    low, high = bgr.input_range()
    np.testing.assert_allclose(high, 255.0)
    normed = Processing(task="detect", imgsz=(32, 32), head=HEAD_OBJECTNESS, mean=(0.5, 0.5, 0.5), std=(0.5,) * 3)
    np.testing.assert_allclose(normed.preprocess(image)[0][2], 1.0)  # blue is the third channel in RGB
    assert normed.describe_input() == "letterbox RGB mean 0.5,0.5,0.5 std 0.5,0.5,0.5"


def test_metadata_written_before_detector_normalisation_reads_as_zero_to_one_pixels():
    """Detectors' metadata of earlier versions stored ImageNet mean/std that preprocessing never applied."""
    old = ('{"task": "detect", "imgsz": [64, 64], "names": {"0": "a"}, "head": "xywh_scores", '
           '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_fraction": 1.0, "nms_iou": 0.7}')
    p = Processing.from_json(old)
    assert (p.mean, p.std, p.channels, p.resize) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb", "letterbox")
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(p.preprocess(image)[0], letterbox(image, (64, 64))[0])


def test_decode_grid_places_rows_on_their_cells():
    from orinflow.models.processing import decode_grid

    pred = torch.zeros(1, 8 * 8 + 4 * 4 + 2 * 2, 6)  # 64x64: 8x8 cells at stride 8, 4x4 at 16, 2x2 at 32
    pred[0, 9, :2] = 0.5  # stride 8, row 1 column 1
    pred[0, 64 + 4 + 3] = torch.tensor([0.0, 0.0, np.log(2.0), 0.0, 1.0, 1.0])  # stride 16, row 1 column 3
    decoded = decode_grid(pred, (64, 64))[0]
    np.testing.assert_allclose(decoded[9, :4], [12.0, 12.0, 8.0, 8.0])
    np.testing.assert_allclose(decoded[71, :4], [48.0, 16.0, 32.0, 16.0], rtol=1e-6)
    with pytest.raises(ValueError, match="has 84 rows"):
        decode_grid(torch.zeros(1, 80, 6), (64, 64))
