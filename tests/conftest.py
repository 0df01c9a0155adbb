import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
SHARED = Path(os.environ.get("ORINFLOW_SHARED", ROOT.parent / "shared"))
DEMO_MODEL = ROOT / "orinflow" / "demo" / "assets" / "shapes_yolov8p.pt"


def shared_path(*parts: str) -> Path:
    """A file in ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set ORINFLOW_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A few images of the demo recipe: enough to exercise every stage quickly."""
    from orinflow.demo import shapes

    return shapes.generate(tmp_path_factory.mktemp("shapes"), {"train": (12, 0), "val": (8, 1)})


@pytest.fixture(scope="session")
def shapes_full(tmp_path_factory) -> Path:
    """The demo's real held-out split (and train split), as `make demo` generates it."""
    from orinflow.demo import shapes

    return shapes.generate(tmp_path_factory.mktemp("shapes_full"), {"train": (32, 0), "val": shapes.SPLITS["val"]})


@pytest.fixture(scope="session")
def demo_adapter():
    from orinflow.models import load_model

    return load_model(DEMO_MODEL, imgsz=256)


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_adapter) -> Path:
    from orinflow.export import export_onnx

    return export_onnx(demo_adapter, tmp_path_factory.mktemp("onnx") / "shapes.onnx").path


@pytest.fixture(scope="session")
def fp32(demo_onnx):
    """The embedded detector's FP32 ONNX, loaded."""
    from orinflow.models import load_model

    return load_model(demo_onnx)


@pytest.fixture(scope="session")
def calib(fp32, tiny_shapes):
    """Eight calibration images for the embedded detector."""
    from orinflow.data import load_dataset
    from orinflow.data.calibration import build_calibration

    return build_calibration(fp32.processing, load_dataset(tiny_shapes, "train"), 8)


@pytest.fixture(scope="session")
def demo_int8(fp32, calib, tmp_path_factory):
    """The embedded detector quantized once per (method, target) on `calib`, shared by every file that only reads
    it: `demo_int8("max", "cpu")` is the quantization record (its `model` is the path)."""
    from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx

    made: dict[tuple[str, str], dict] = {}

    def quantized(method: str = "entropy", target: str = "tensorrt") -> dict:
        if (method, target) not in made:
            out = tmp_path_factory.mktemp("int8") / f"shapes_{method}_{target}.onnx"
            made[method, target] = quantize_onnx(fp32, calib, QuantizeSpec(method=method, target=target), out)
        return made[method, target]

    return quantized


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """Three classes of solid-colour 32x32 images."""
    import cv2

    root = tmp_path / "classes"
    for idx, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        (root / f"c{idx}").mkdir(parents=True)
        for j in range(4):
            image = np.full((32, 32, 3), colour, np.uint8)
            image[j:j + 4] = 128
            cv2.imwrite(str(root / f"c{idx}" / f"{j}.png"), image)
    return root
