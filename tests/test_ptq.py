import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import orinflow
from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.models import load_model
from orinflow.optimize.common.graph import decode_nodes
from orinflow.optimize.quantize.ort_worker import calibration_stride
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx
from orinflow.optimize.common.qdq_report import DATA_MOVEMENT

NO_LATENCY = EvalOptions(measure_latency=False, batch=4)


@pytest.fixture(scope="module")
def trt_int8(demo_int8):
    return demo_int8()  # the defaults: entropy, tensorrt


def _decode_reads_quantized(path):
    model = onnx.load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    return [name for name in decode_nodes(onnx.load(path)) if by_name[name].op_type not in DATA_MOVEMENT
            and any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in by_name[name].input)]


def test_decode_found_by_pattern_in_yolov8_head(fp32):
    model = onnx.load(str(fp32.path))
    ops = {n.name: n.op_type for n in model.graph.node}
    decode = decode_nodes(model)
    kinds = {ops[n] for n in decode}
    assert {"Softmax", "Sigmoid", "Concat", "Conv"} <= kinds  # DFL, scores, final concat, DFL projection
    assert sum(ops[n] == "Conv" for n in decode) == 1  # only the DFL conv; the head's learned convs stay INT8


def test_tensorrt_int8_is_lint_clean_and_keeps_accuracy(trt_int8, fp32, tiny_shapes):
    report = trt_int8["qdq_report"]
    assert report["lint"] == [] and report["quantized_flop_share"] > 0.95
    assert report["decode_nodes_reading_quantized"] == [] and _decode_reads_quantized(trt_int8["model"]) == []
    model = onnx.load(trt_int8["model"])
    assert {p.key for p in model.metadata_props} >= {"orinflow.processing", "orinflow.quantization"}
    zero_points = [i for n in model.graph.node if n.op_type == "QuantizeLinear" for i in n.input[2:]]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(not np.any(inits[z]) for z in zero_points if z in inits)  # symmetric: zero point 0
    base = evaluate_model(fp32, tiny_shapes, options=NO_LATENCY)["metrics"]["mAP50-95"]
    quant = evaluate_model(load_model(trt_int8["model"]), tiny_shapes, options=NO_LATENCY)["metrics"]["mAP50-95"]
    assert abs(base - quant) < 0.05


def test_head_protection_can_be_turned_off(fp32, calib, trt_int8, tmp_path):
    record = quantize_onnx(fp32, calib, QuantizeSpec(head_protect=False), tmp_path / "raw.onnx")
    assert record["excluded_nodes"] == []
    assert record["qdq_report"]["quantized_compute_nodes"] > trt_int8["qdq_report"]["quantized_compute_nodes"]


def test_percentile_keeps_concat_scales_aligned(fp32, calib, tmp_path):
    record = quantize_onnx(fp32, calib, QuantizeSpec(method="percentile", percentile=99.9), tmp_path / "p.onnx")
    assert record["qdq_report"]["lint"] == []


def test_cpu_target_uses_fusable_u8s8_layout(fp32, calib, tmp_path):
    record = quantize_onnx(fp32, calib, QuantizeSpec(target="cpu"), tmp_path / "cpu.onnx")
    model = onnx.load(record["model"])
    types = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.UINT8 in types and onnx.TensorProto.INT8 in types
    assert record["qdq_report"]["quantized_flop_share"] > 0.95
    assert _decode_reads_quantized(record["model"]) == []
    ort.InferenceSession(record["model"], providers=["CPUExecutionProvider"])


def test_fp8_mode_loads_in_onnxruntime(fp32, calib, tmp_path):
    record = quantize_onnx(fp32, calib, QuantizeSpec(mode="fp8", method="max"), tmp_path / "fp8.onnx")
    assert record["qdq_report"]["quantized_compute_nodes"] > 0
    out = ort.InferenceSession(record["model"], providers=["CPUExecutionProvider"]).run(None, {"images": calib[:1]})
    assert np.isfinite(out[0]).all()


@pytest.mark.parametrize("spec, message", [
    (QuantizeSpec(mode="int2"), "unknown --mode"),
    (QuantizeSpec(method="kl"), "unknown --method"),
    (QuantizeSpec(method="mse", target="cpu"), "--method mse clips"),
    (QuantizeSpec(mode="fp8", target="cpu"), "cannot run on ONNX Runtime's CPU provider"),
    (QuantizeSpec(mode="int4"), "quantized none"),
    (QuantizeSpec(exclude=["("]), "not a valid regex"),
])
def test_bad_specs_fail_clearly_and_write_nothing(fp32, calib, tmp_path, spec, message):
    with pytest.raises(OrinflowError, match=message):
        quantize_onnx(fp32, calib, spec, tmp_path / "out.onnx")
    assert not any(tmp_path.iterdir())


def test_already_quantized_and_empty_calibration_are_refused(fp32, calib, trt_int8, tmp_path):
    with pytest.raises(OrinflowError, match="already quantized"):
        quantize_onnx(load_model(trt_int8["model"]), calib, QuantizeSpec(), tmp_path / "again.onnx")
    with pytest.raises(OrinflowError, match="empty"):
        quantize_onnx(fp32, calib[:0], QuantizeSpec(), tmp_path / "empty.onnx")
    assert not any(tmp_path.iterdir())


def test_calibration_stride_divides():
    assert calibration_stride(64) == 16 and calibration_stride(262) == 2 and calibration_stride(7) == 7


def test_quantize_cli_rejects_wrong_calibration_shape(demo_onnx, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 64, 64), np.float32))
    result = CliRunner().invoke(app, ["quantize", "-m", str(demo_onnx), "--calib", str(wrong),
                                      "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 2 and "(N, 3, 256, 256)" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_ptq_route_end_to_end(tmp_path, tiny_shapes):
    from conftest import DEMO_MODEL

    result = CliRunner().invoke(app, ["ptq", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes),
                                      "-n", "4", "--methods", "entropy,max", "--targets", "tensorrt,cpu",
                                      "--runs", "2", "--runtimes", "onnxruntime,openvino", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ptq_record.json").read_text())
    assert len(record["variants"]) == 4 and set(record["best"]) == {"tensorrt", "cpu"}
    assert all(v["qdq_report"]["quantized_flop_share"] > 0.9 for v in record["variants"])
    assert "best for tensorrt" in result.output
    # --runtimes: every model timed on both, side by side, and the fastest named in the output and the report
    for model in [record["fp32"], *record["variants"]]:
        timed = model["latency_by_runtime"]
        assert set(timed) == {"onnxruntime", "openvino"} and all(t["median"] > 0 for t in timed.values())
        assert model["best_runtime"] == min(timed, key=lambda r: timed[r]["median"])
    assert "fastest" in result.output
    report = orinflow.report([tmp_path / "ptq_record.json"], output=tmp_path / "report")
    table = Path(report["markdown"]).read_text()
    fp32_best = record["fp32"]["best_runtime"]
    assert f"{record['fp32']['latency_by_runtime'][fp32_best]['label']} (" in table
