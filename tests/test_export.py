import numpy as np
import onnx
import pytest

from orinflow.errors import OrinflowError
from orinflow.export import export_onnx
from orinflow.models import load_model
from orinflow.models.onnx_model import META_PROCESSING
from orinflow.runtime import OrtRunner, TorchRunner


def test_static_export_has_metadata_and_parity(demo_adapter, demo_onnx):
    model = onnx.load(str(demo_onnx))
    assert {p.key for p in model.metadata_props} >= {META_PROCESSING}
    assert model.opset_import[0].version == 17
    record = demo_onnx.with_suffix(".json")
    assert record.exists()
    reloaded = load_model(demo_onnx)
    assert reloaded.processing == demo_adapter.processing and reloaded.num_params() == demo_adapter.num_params()


def test_dynamic_batch_export_runs_batch_of_three(demo_adapter, tmp_path):
    result = export_onnx(demo_adapter, tmp_path / "dyn.onnx", dynamic=True, opset=18)
    batch = np.random.default_rng(0).random((3, 3, 256, 256), dtype=np.float32)
    ort_out = OrtRunner(result.path).run(batch)[0]
    torch_out = TorchRunner(demo_adapter).run(batch)[0]
    assert ort_out.shape == (3, 7, 1344)
    assert np.abs(ort_out - torch_out).max() < 1e-2


def test_half_export_keeps_float_io(demo_adapter, tmp_path):
    result = export_onnx(demo_adapter, tmp_path / "half.onnx", half=True)
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert result.record["parity"]["max_abs_diff"] > 0  # FP16 really changed the arithmetic


def test_yolo26_from_yaml_parity_within_1e3(tmp_path):
    adapter = load_model("yolo26n.yaml", imgsz=320)
    result = export_onnx(adapter, tmp_path / "yolo26n.onnx")
    assert result.record["parity"]["max_abs_diff"] < 1e-3


def test_bad_output_suffix_leaves_nothing(demo_adapter, tmp_path):
    with pytest.raises(OrinflowError, match="must end in .onnx"):
        export_onnx(demo_adapter, tmp_path / "model.txt")
    assert list(tmp_path.iterdir()) == []


def test_broken_export_fails_loudly_and_leaves_nothing(demo_adapter, tmp_path, monkeypatch):
    import importlib

    export_module = importlib.import_module("orinflow.export")  # the subpackage (orinflow.export is the API function)

    real = export_module.TorchRunner

    class Skewed(real):  # PyTorch reference that disagrees with the graph
        def run(self, batch):
            return [out + 1.0 for out in super().run(batch)]

    monkeypatch.setattr(export_module, "TorchRunner", Skewed)
    with pytest.raises(OrinflowError, match="export is broken"):
        export_onnx(demo_adapter, tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []
