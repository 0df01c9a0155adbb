import numpy as np
import pytest

from orinflow.data import load_dataset
from orinflow.data.calibration import build_calibration, load_calibration, save_calibration, select_images
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.models import load_model

NO_LATENCY = EvalOptions(measure_latency=False, batch=4)


def test_calibration_is_seeded_and_matches_preprocessing(demo_adapter, tiny_shapes, tmp_path):
    dataset = load_dataset(tiny_shapes, "train")
    assert select_images(dataset, 5, seed=1) == select_images(dataset, 5, seed=1)
    assert select_images(dataset, 5, seed=1) != select_images(dataset, 5, seed=2)
    array = build_calibration(demo_adapter.processing, dataset, 4, seed=0)
    from orinflow.data import read_image

    first = select_images(dataset, 4, seed=0)[0]
    np.testing.assert_array_equal(array[0], demo_adapter.processing.preprocess(read_image(first))[0])
    path = save_calibration(array, tmp_path / "c.npy")
    assert load_calibration(path, demo_adapter.processing).shape == (4, 3, 256, 256)


def test_calibration_shape_mismatch_is_refused(demo_adapter, tmp_path):
    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros((2, 3, 128, 128), np.float32))
    with pytest.raises(OrinflowError, match="takes \\(N, 3, 256, 256\\)"):
        load_calibration(path, demo_adapter.processing)
    np.save(path, np.zeros((0, 3, 256, 256), np.float32))
    with pytest.raises(OrinflowError, match="empty"):
        load_calibration(path, demo_adapter.processing)


def test_embedded_detector_is_good_on_its_held_out_split(demo_adapter, demo_onnx, shapes_full):
    torch_record = evaluate_model(demo_adapter, shapes_full, "val", NO_LATENCY)
    onnx_record = evaluate_model(load_model(demo_onnx), shapes_full, "val", NO_LATENCY)
    assert torch_record["images"] == 100
    assert torch_record["metrics"]["mAP50"] >= 0.5
    assert abs(torch_record["metrics"]["mAP50-95"] - onnx_record["metrics"]["mAP50-95"]) <= 0.002


def test_classification_top1_top5(class_tree, tmp_path):
    import torch
    from torch import nn

    # A classifier that reads the mean colour: class 0 red, 1 green, 2 blue (input is RGB).
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(3))
    path = tmp_path / "colour.pt"
    torch.save(model.state_dict(), path)
    module_file = tmp_path / "colour_arch.py"
    module_file.write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.AdaptiveAvgPool2d(1), "
                           "nn.Flatten(), nn.Linear(3, 3, bias=False))\n")
    adapter = load_model(path, arch=f"{module_file}:build", imgsz=32, mean=(0, 0, 0), std=(1, 1, 1))
    record = evaluate_model(adapter, class_tree, options=NO_LATENCY)
    assert record["metrics"]["top1"] == 1.0 and record["metrics"]["top5"] == 1.0
    with torch.no_grad():
        adapter.module[2].weight.copy_(torch.eye(3)[[1, 2, 0]])  # every prediction shifted to a wrong class
    assert evaluate_model(adapter, class_tree, options=NO_LATENCY)["metrics"]["top1"] == 0.0


def test_relative_yaml_paths_resolve_from_any_working_directory(tiny_shapes, monkeypatch):
    import os

    monkeypatch.chdir(tiny_shapes.parent.parent)
    relative = os.path.relpath(tiny_shapes)
    assert len(load_dataset(relative, "val")) == 8
