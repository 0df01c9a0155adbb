import pickle
import sys

import pytest
import torch

from conftest import ASSETS, DEMO_MODEL, shared_path
from orinflow.errors import OrinflowError
from orinflow.models import load_model

RESNET20 = f"{ASSETS / 'resnet_cifar.py'}:resnet20"


def test_ultralytics_checkpoint_adapter(demo_adapter):
    assert demo_adapter.family == "ultralytics" and demo_adapter.task == "detect"
    assert demo_adapter.processing.names == {0: "circle", 1: "square", 2: "triangle"}
    out = demo_adapter.export_module()(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 4 + 3, 1344)


def test_ultralytics_yaml_adapter():
    adapter = load_model("yolo26n.yaml", imgsz=128)
    assert adapter.task == "detect" and len(adapter.processing.names) == 80


def test_yolov5_checkpoint_loads_without_yolov5_repo():
    path = shared_path("weights", "yolov5n.pt")
    adapter = load_model(path)
    assert "models" not in sys.modules and "models.yolo" not in sys.modules
    assert adapter.family == "yolov5" and adapter.num_params() == 1_867_405  # as yolov5 reports after fusing
    out = adapter.export_module()(torch.zeros(1, 3, 320, 320))
    assert out.shape == (1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85)


def test_classifier_from_user_file(tmp_path):
    from tests_helpers import resnet20_state

    weights = tmp_path / "r20.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet20_state().items()}}, weights)
    adapter = load_model(weights, arch=RESNET20, imgsz=32)
    assert adapter.task == "classify" and adapter.export_module()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_arch_without_weights():
    adapter = load_model("", arch="resnet18", imgsz=64)
    assert adapter.processing.crop_fraction == 1.0 and adapter.num_params() > 1e7


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable PyTorch checkpoint"),
    (pickle.dumps({"hello": 1}), "not a model orinflow recognises"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    if content.startswith(b"not"):
        with pytest.raises(OrinflowError, match=message):
            load_model(path, arch=RESNET20)
    else:
        torch.save({"hello": 1}, path)
        with pytest.raises(OrinflowError, match=message):
            load_model(path)


def test_state_dict_needs_arch(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(OrinflowError, match="--arch"):
        load_model(path)


class _RunsCode:
    """What a hostile weights file pickles: unpickling it calls os.system."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_weights_for_arch_never_run_code_from_the_file(tmp_path):
    marker = tmp_path / "PWNED"
    hostile = tmp_path / "weights.th"
    torch.save({"fc.weight": torch.zeros(10, 64), "note": _RunsCode(marker)}, hostile)
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    for path, named in ((hostile, "system"), (whole, "Linear")):
        with pytest.raises(OrinflowError, match=f"pickles Python objects.*{named}.*weights_only=True"):
            load_model(path, arch=RESNET20)
    assert not marker.exists()


def test_state_dict_that_does_not_fit(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(OrinflowError, match="does not fit"):
        load_model(path, arch=RESNET20)


def test_missing_model_and_bad_stride():
    with pytest.raises(OrinflowError, match="not found"):
        load_model("nope/missing.pt")
    with pytest.raises(OrinflowError, match="multiple of the model's stride"):
        load_model(DEMO_MODEL, imgsz=250)
