"""The families' label losses: they prefer the true labels, train toward them, and drive QAT end to end."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import shared_path
from orinflow.data import load_dataset
from orinflow.models import load_model
from orinflow.models.processing import ImageMeta, unletterbox
from orinflow.optimize.train.losses import YOLOv5DetectionLoss, input_targets
from orinflow.optimize.quantize.qat import run_qat
from orinflow.optimize.train.config import QATConfig
from orinflow.optimize.train.loop import batches
from orinflow.optimize.train.objective import Objective


def test_targets_follow_the_letterbox():
    meta = ImageMeta((300, 600), 256 / 600, (0.0, 64.0))  # a wide image letterboxed into 256x256
    labels = [np.array([[2, 0.25, 0.5, 0.1, 0.2]], np.float32)]
    target = input_targets(labels, [meta], (256, 256))[0]
    cx, cy, w, h = (target[2:] * 256).tolist()
    back = unletterbox(np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], np.float32), meta)[0]
    assert target[:2].tolist() == [0, 2]
    assert np.allclose(back, [0.25 * 600 - 30, 0.5 * 300 - 30, 0.25 * 600 + 30, 0.5 * 300 + 30], atol=1e-3)


def test_yolov5_loss_trains_raw_outputs_toward_the_target():
    """Gradient steps on the raw head outputs alone must put a confident, well-placed box on the target."""
    anchors = torch.tensor([[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]]])
    raw = torch.zeros(1, 3, 8, 8, 5 + 4, requires_grad=True)
    detect = SimpleNamespace(nl=1, nc=4, anchors=anchors, raw=[raw])
    loss_fn = YOLOv5DetectionLoss(SimpleNamespace(model=[detect]))
    target = torch.tensor([[0, 3, 0.40, 0.55, 0.30, 0.35]])  # image 0, class 3, xywh normalised (8x8 grid)
    optimizer = torch.optim.Adam([raw], lr=0.1)
    first = loss_fn(None, target).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = loss_fn(None, target)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    p = raw.detach().sigmoid()[0]
    a, gy, gx = np.unravel_index(int(p[..., 4].argmax()), p.shape[:3])
    xy = (p[a, gy, gx, :2] * 2 - 0.5 + torch.tensor([gx, gy])) / 8
    wh = (p[a, gy, gx, 2:4] * 2) ** 2 * anchors[0, a] / 8
    assert torch.allclose(torch.cat((xy, wh)), target[0, 2:], atol=0.03)
    assert int(p[a, gy, gx, 5:].argmax()) == 3 and p[a, gy, gx, 4] > 0.5


def _label_loss(adapter, data_yaml, shift: float, flip_all: bool = False) -> float:
    dataset = load_dataset(data_yaml, "val")
    student = copy.deepcopy(adapter.export_module()).eval()
    objective = Objective(adapter, student, adapter.export_module(),
                          QATConfig(distill=False, labels=True, flip=flip_all))
    if flip_all:
        objective.rng = SimpleNamespace(random=lambda n: np.zeros(n))  # every image mirrored
    images, labels, metas, _ = next(batches(dataset, adapter, np.arange(min(4, len(dataset))), 4))
    labels = [lb + np.array([0, shift, shift, 0, 0], np.float32) for lb in labels]
    with torch.no_grad():
        return objective(images, labels, metas).item()


def test_ultralytics_label_loss_prefers_true_labels(demo_adapter, tiny_shapes):
    true_loss, shifted = _label_loss(demo_adapter, tiny_shapes, 0.0), _label_loss(demo_adapter, tiny_shapes, 0.15)
    assert np.isfinite(true_loss) and true_loss < 0.5 * shifted


def test_flipped_images_get_mirrored_labels(demo_adapter, tiny_shapes):
    """Mirroring the batch must mirror its boxes too: the loss then stays as low as unflipped."""
    plain, flipped = _label_loss(demo_adapter, tiny_shapes, 0.0), _label_loss(demo_adapter, tiny_shapes, 0.0, True)
    shifted = _label_loss(demo_adapter, tiny_shapes, 0.15)
    assert flipped < 0.5 * shifted and abs(flipped - plain) < 0.5 * plain


def test_detector_qat_with_labels_only(demo_adapter, tiny_shapes, tmp_path):
    config = QATConfig(epochs=1, batch=4, calib_images=4, max_steps=2, lr=1e-5, distill=False, labels=True)
    record = run_qat(demo_adapter, load_dataset(tiny_shapes, "train"), config, tmp_path / "q.onnx", say=lambda m: 0)
    assert np.isfinite(record["losses"][0]) and record["losses"][0] > 0 and record["qdq_report"]["lint"] == []


def test_yolov5n_label_loss_prefers_true_labels_on_coco8():
    adapter = load_model(shared_path("weights", "yolov5n.pt"), imgsz=320)
    data = shared_path("data", "coco8", "coco8.yaml")
    losses = [_label_loss(adapter, data, shift) for shift in (0.0, 0.05, 0.2)]
    assert np.isfinite(losses[0]) and losses[0] < losses[1] < losses[2]  # worse the further the boxes move
    assert not adapter.module.model[-1].keep_raw  # only the student copy keeps raw outputs


def test_label_loss_needs_labels(demo_adapter, tmp_path):
    import cv2

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.jpg"), np.full((64, 64, 3), 100, np.uint8))
    from orinflow.errors import OrinflowError

    config = QATConfig(epochs=1, batch=2, calib_images=2, max_steps=1, distill=False, labels=True)
    with pytest.raises(OrinflowError, match="label loss needs detect labels"):
        run_qat(demo_adapter, load_dataset(tmp_path / "imgs"), config, tmp_path / "q.onnx", say=lambda m: 0)


def test_mixup_readdresses_each_images_objects_to_the_image_that_blends_it_in():
    from orinflow.optimize.train.objective import _moved_to_partners

    targets = torch.tensor([[0, 5, .1, .1, .1, .1], [2, 7, .2, .2, .2, .2], [2, 8, .3, .3, .3, .3]])
    partner = torch.tensor([2, 0, 1])  # image 0 blends in image 2, image 1 image 0, image 2 image 1
    moved = _moved_to_partners(targets, partner)
    assert moved[:, 0].tolist() == [1, 0, 0] and torch.equal(moved[:, 1:], targets[:, 1:])


def test_mixup_class_loss_weighs_both_labels_by_their_share():
    from orinflow.optimize.train.objective import _class_loss

    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    partner = torch.tensor([1, 2, 0])
    ce = torch.nn.functional.cross_entropy
    assert torch.isclose(_class_loss(logits, labels, partner, torch.ones(3)), ce(logits, labels))
    assert torch.isclose(_class_loss(logits, labels, partner, torch.zeros(3)), ce(logits, labels[partner]))


def test_detector_mixup_blends_images_and_trains_on_both_images_labels(demo_adapter, tiny_shapes):
    """A blended batch scores against the union of both images' boxes: lower than against one image's only."""
    dataset = load_dataset(tiny_shapes, "val")
    student = copy.deepcopy(demo_adapter.export_module()).eval()
    objective = Objective(demo_adapter, student, demo_adapter.export_module(),
                          QATConfig(distill=False, labels=True, mixup=True))
    images, labels, metas, _ = next(batches(dataset, demo_adapter, np.arange(min(4, len(dataset))), 4))
    objective._mixing = lambda n, device: (torch.roll(torch.arange(n), 1), torch.full((n,), 0.5))
    with torch.no_grad():
        union = objective(images, labels, metas).item()
        objective.config.mixup, objective._mixing = False, lambda n, device: (None, None)
        half = 0.5 * images + 0.5 * images[torch.roll(torch.arange(len(images)), 1)]
        own_only = objective(half, labels, metas).item()
    assert np.isfinite(union) and union < own_only
