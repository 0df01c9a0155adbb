"""export --nms onnx|trt: decode and NMS inside the graph, read directly by evaluation, kept out of quantization."""
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import orinflow
from conftest import DEMO_MODEL, shared_path
from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.export.nms import PREFIX, detach_nms

runner = CliRunner()
QUIET = {"say": lambda m: None}


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory):
    """The embedded detector exported three ways: raw, onnx NMS and trt NMS (evaluation thresholds)."""
    folder = tmp_path_factory.mktemp("e2e")
    for name, nms in (("raw", None), ("onnx", "onnx"), ("trt", "trt")):
        orinflow.export(DEMO_MODEL, imgsz=256, dynamic=True, nms=nms, conf=0.001, output=folder / f"{name}.onnx")
    return folder


def _mAP(model, data, **kwargs):
    return orinflow.evaluate(model, data, runs=0, **QUIET, **kwargs)["metrics"]["mAP50-95"]


def test_onnx_nms_scores_as_python_postprocessing(end_to_end, tiny_shapes):
    raw = _mAP(end_to_end / "raw.onnx", tiny_shapes)
    assert raw > 0.5
    assert abs(_mAP(end_to_end / "onnx.onnx", tiny_shapes) - raw) <= 0.001
    assert abs(_mAP(end_to_end / "onnx.onnx", tiny_shapes, batch=4) - raw) <= 0.001  # dynamic batch: per image
    record = orinflow.load(end_to_end / "onnx.onnx")
    assert record.processing.head == "xyxy_score_class"


def test_both_flavours_share_the_graph_up_to_the_nms_node(end_to_end):
    graphs = {f: onnx.load(str(end_to_end / f"{f}.onnx")).graph for f in ("onnx", "trt")}
    before = {}
    for flavour, graph in graphs.items():
        nodes = [n for n in graph.node if n.name.startswith(PREFIX)]
        nms_at = next(i for i, n in enumerate(nodes) if n.op_type in ("NonMaxSuppression", "EfficientNMS_TRT"))
        before[flavour] = [(n.op_type, list(n.input), list(n.output)) for n in nodes[:nms_at]]
    # The same decode and pre-NMS top-k; ONNX's NonMaxSuppression then reads scores as (batch, class, box).
    assert before["onnx"][:-1] == before["trt"] and len(before["trt"]) > 5
    shared_outputs = {o for _, _, outs in before["trt"] for o in outs}
    assert before["onnx"][-1][0] == "Transpose" and before["onnx"][-1][1][0] in shared_outputs


def test_trt_flavour_is_valid_onnx_with_the_plugin_and_its_attributes(end_to_end, tiny_shapes):
    model = onnx.load(str(end_to_end / "trt.onnx"))
    onnx.checker.check_model(model)
    plugin = next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert attributes == {"background_class": -1, "box_coding": 0, "iou_threshold": pytest.approx(0.7),
                          "max_output_boxes": 300, "plugin_version": b"1", "score_activation": 0,
                          "score_threshold": pytest.approx(0.001), "class_agnostic": 0}
    assert plugin.domain == "TRT" and any(o.domain == "TRT" for o in model.opset_import)
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    assert outputs == [("num_dets", onnx.TensorProto.INT32), ("det_boxes", onnx.TensorProto.FLOAT),
                       ("det_scores", onnx.TensorProto.FLOAT), ("det_classes", onnx.TensorProto.INT32)]
    with pytest.raises(OrinflowError, match="only TensorRT runs"):
        _mAP(end_to_end / "trt.onnx", tiny_shapes)


def test_efficient_nms_outputs_are_read_as_detections():
    from orinflow.models.processing import HEAD_EFFICIENT_NMS, Processing

    p = Processing(task="detect", imgsz=(64, 64), head=HEAD_EFFICIENT_NMS)
    count = np.array([[2], [0]], np.int32)
    boxes = np.tile(np.array([[1, 2, 11, 12]], np.float32), (2, 3, 1))
    scores = np.array([[0.9, 0.5, 0.7], [0.8, 0.8, 0.8]], np.float32)  # past num_dets: padding, ignored
    classes = np.array([[1, 0, 2], [1, 1, 1]], np.int32)
    rows = p.head_output([count, boxes, scores, classes])
    assert rows.shape == (2, 3, 6) and rows[0, :2, 4].tolist() == pytest.approx([0.9, 0.5]) and not rows[1].any()


def test_detach_restores_the_raw_graph(end_to_end):
    raw = onnx.load(str(end_to_end / "raw.onnx"))
    for flavour in ("onnx", "trt"):
        restored, spec = detach_nms(onnx.load(str(end_to_end / f"{flavour}.onnx")))
        assert spec.flavour == flavour and spec.pre_topk == 30000
        assert list(restored.graph.node) == list(raw.graph.node)
        assert list(restored.graph.initializer) == list(raw.graph.initializer)
        assert list(restored.graph.output) == list(raw.graph.output)
        assert list(restored.metadata_props) == list(raw.metadata_props)


def test_quantize_keeps_nms_out_of_quantization(end_to_end, calib, tiny_shapes, tmp_path):
    np.save(tmp_path / "calib.npy", calib)
    scores = {}
    for name in ("raw", "onnx"):
        record = orinflow.quantize(end_to_end / f"{name}.onnx", calib=tmp_path / "calib.npy", method="max",
                                   output=tmp_path / f"{name}_int8.onnx", **QUIET)
        scores[name] = _mAP(tmp_path / f"{name}_int8.onnx", tiny_shapes)
    assert record["nms"]["flavour"] == "onnx" and record["model"] == str(tmp_path / "onnx_int8.onnx")
    assert abs(scores["raw"] - scores["onnx"]) <= 0.001
    graph = onnx.load(str(tmp_path / "onnx_int8.onnx")).graph
    qdq = {t for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for t in n.output}
    nms_nodes = [n for n in graph.node if n.name.startswith(PREFIX)]
    assert nms_nodes and not any(t in qdq for n in nms_nodes for t in n.input)
    assert orinflow.inspect(tmp_path / "onnx_int8.onnx")["qdq_report"]["lint"] == []
    trt = orinflow.quantize(end_to_end / "trt.onnx", calib=tmp_path / "calib.npy", method="max",
                            output=tmp_path / "trt_int8.onnx", **QUIET)
    assert trt["nms"]["flavour"] == "trt"
    bundle = orinflow.deploy(tmp_path / "trt_int8.onnx", output=tmp_path / "bundle")
    assert "--stronglyTyped" in bundle["build_engine"] and bundle["traits"]["has_processing"]


@pytest.mark.parametrize("args, message", [
    (["--nms", "onnx", "--pre-topk", "50", "--keep-topk", "100"], "--pre-topk 50 is smaller than --keep-topk 100"),
    (["--nms", "tensorrt"], "--nms tensorrt: choose onnx or trt"),
    (["--nms", "onnx", "--conf", "1.5"], "--conf and --iou must lie in (0, 1)"),
])
def test_bad_nms_options_are_one_line_and_write_nothing(args, message, tmp_path):
    result = runner.invoke(app, ["export", "-m", str(DEMO_MODEL), "--imgsz", "256", *args,
                                 "-o", str(tmp_path / "e2e.onnx")])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_yolov5n_end_to_end_matches_its_raw_export_on_coco8(tmp_path):
    weights = shared_path("weights", "yolov5n.pt")
    coco8 = shared_path("data", "coco8", "coco8.yaml")
    for name, nms in (("raw", None), ("e2e", "onnx")):
        orinflow.export(weights, imgsz=320, nms=nms, conf=0.001, output=tmp_path / f"{name}.onnx")
    assert abs(_mAP(tmp_path / "raw.onnx", coco8) - _mAP(tmp_path / "e2e.onnx", coco8)) <= 0.001


def test_deploy_prefers_the_end_to_end_engine(end_to_end, tiny_shapes, tmp_path):
    import subprocess
    import sys

    raw = end_to_end / "raw.onnx"
    bundle = orinflow.deploy(raw, output=tmp_path / "trt")
    assert bundle["nms"]["flavour"] == "trt" and bundle["model"] == str(raw)
    deployed = onnx.load(str(tmp_path / "trt" / "model.onnx"))
    assert any(n.op_type == "EfficientNMS_TRT" for n in deployed.graph.node)
    assert (tmp_path / "trt" / "model_raw.onnx").read_bytes() == raw.read_bytes()
    assert "EfficientNMS_TRT inside the engine" in (tmp_path / "trt" / "README.md").read_text()
    onnx_bundle = orinflow.deploy(raw, output=tmp_path / "onnx", nms="onnx", conf=0.001)
    assert onnx_bundle["nms"]["flavour"] == "onnx" and not (tmp_path / "onnx" / "model_raw.onnx").exists()
    desktop = _mAP(raw, tiny_shapes)
    for folder in ("trt", "onnx"):  # ONNX Runtime: model_raw.onnx in the trt bundle, the end-to-end graph in the other
        result = subprocess.run([sys.executable, str(tmp_path / folder / "infer.py"), "--backend", "onnxruntime",
                                 "--eval", str(tiny_shapes)], capture_output=True, text=True, cwd="/", check=False)
        assert result.returncode == 0, result.stderr
        on_device = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]["mAP50-95"]
        assert abs(on_device - desktop) <= 0.001, folder
    assert "nms" not in orinflow.deploy(end_to_end / "onnx.onnx", output=tmp_path / "already")  # NMS inside already
    assert "nms" not in orinflow.deploy(raw, output=tmp_path / "none", nms="none")


def test_deploy_runs_no_layer_in_fp32_on_tensorrt_10(end_to_end, calib, tiny_shapes, tmp_path):
    """A Q/DQ model keeps FP32 where it is not quantized (to be evaluated on a CPU); its bundle for TensorRT 10
    (--stronglyTyped) gets those layers in FP16, network I/O and the NMS part in FP32, accuracy measured."""
    import subprocess
    import sys

    from orinflow.deploy.prepare import needs_fp16_layers

    np.save(tmp_path / "calib.npy", calib)
    int8 = orinflow.quantize(end_to_end / "raw.onnx", calib=tmp_path / "calib.npy", method="max",
                             output=tmp_path / "int8.onnx", **QUIET)["model"]
    assert needs_fp16_layers(onnx.load(int8))
    bundle = orinflow.deploy(int8, output=tmp_path / "b", nms="onnx", conf=0.001)
    assert bundle["high_precision"] == "fp16 (converted at deploy)" and "--stronglyTyped" in bundle["build_engine"]
    deployed = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert not needs_fp16_layers(deployed) and any(n.op_type == "NonMaxSuppression" for n in deployed.graph.node)
    assert {o.type.tensor_type.elem_type for o in [*deployed.graph.input, *deployed.graph.output]} == {
        onnx.TensorProto.FLOAT}
    assert "converted to FP16" in (tmp_path / "b" / "README.md").read_text()
    result = subprocess.run([sys.executable, str(tmp_path / "b" / "infer.py"), "--backend", "onnxruntime", "--eval",
                             str(tiny_shapes)], capture_output=True, text=True, cwd="/", check=False)
    assert result.returncode == 0, result.stderr
    on_device = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]["mAP50-95"]
    assert abs(on_device - _mAP(int8, tiny_shapes)) <= 0.01
    for name, kwargs in (("trt8", {"trt": "8"}), ("fp32", {"fp16": False})):  # 8: --int8 --fp16; FP32 asked
        assert "high_precision" not in orinflow.deploy(int8, output=tmp_path / name, **kwargs)
