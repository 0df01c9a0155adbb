"""OpenVINO as a runtime: the same ONNX files, the same processing and metrics, on x86 CPUs (runtime/openvino.py)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

import orinflow
from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.export import export_onnx
from orinflow.models import load_model
from orinflow.optimize.common.graph import fold_weight_qdq
from orinflow.runtime import make_runner
from orinflow.runtime.openvino import OpenVinoRunner


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def first_layer_graph(weights_qdq: bool) -> onnx.ModelProto:
    """An image-like input quantized to signed INT8 (TensorRT's layout) into a conv with per-channel INT8
    weights: the case where 16-bit sums saturate without VNNI."""
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(16, 3, 6, 6)) * 0.3).astype(np.float32)
    scale = (np.abs(weight).reshape(16, -1).max(1) / 127).astype(np.float32)
    initializers = [numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(np.zeros(16, np.int8), "wz"),
                    numpy_helper.from_array(np.array(1 / 127, np.float32), "xs"),
                    numpy_helper.from_array(np.array(0, np.int8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    if weights_qdq:  # ModelOpt's form: float weight, Q and DQ
        initializers.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0))
    else:  # ONNX Runtime's form: INT8 initializer, DQ
        integers = np.clip(np.round(weight / scale[:, None, None, None]), -127, 127).astype(np.int8)
        initializers.append(numpy_helper.from_array(integers, "wq"))
    nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
              helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[6, 6], pads=[2, 2, 2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "first_layer", [helper.make_tensor_value_info("x", 1, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", 1, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    return model


def scales_in_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ModelOpt's QAT export form: scales and zero points are Constant nodes, not initializers."""
    moved = [t for t in model.graph.initializer if t.name in ("ws", "wz", "xs", "xz")]
    for tensor in moved:
        model.graph.initializer.remove(tensor)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in moved]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.mark.parametrize("form", ["weight-q-dq", "int8-initializer", "qat-constant-scales"])
def test_folding_the_weights_q_dq_keeps_the_function_and_the_activation_quantizers(form, tmp_path):
    model = first_layer_graph(form != "int8-initializer")
    if form == "qat-constant-scales":
        model = scales_in_constant_nodes(model)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    folded = onnx.ModelProto.FromString(model.SerializeToString())
    assert fold_weight_qdq(folded) == 1
    ops = [n.op_type for n in folded.graph.node if n.op_type != "Constant"]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Conv"]  # the activation's pair stays
    got = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(got[0] - reference[0]).max() < 1e-5
    onnx.save(model, str(tmp_path / "m.onnx"))
    emulated = OpenVinoRunner(tmp_path / "m.onnx", threads=1, form="exact")
    assert emulated.form == "exact" and np.abs(emulated.run(x)[0] - reference[0]).max() < 1e-4


def test_every_model_form_runs_on_openvino_as_on_onnxruntime(fp32, demo_int8, demo_adapter, tiny_shapes, tmp_path):
    import cv2

    from orinflow.data import load_dataset

    images = load_dataset(tiny_shapes, "val").images[:4]
    batch = np.stack([fp32.processing.preprocess(cv2.imread(str(p)))[0] for p in images])
    dynamic = export_onnx(demo_adapter, tmp_path / "dynamic.onnx", dynamic=True).path
    half = export_onnx(demo_adapter, tmp_path / "half.onnx", half=True).path
    forms = {"fp32": fp32.path, "dynamic": dynamic, "fp16": half, "int8 tensorrt": demo_int8("max", "tensorrt")["model"],
             "int8 cpu": demo_int8("entropy", "cpu")["model"]}
    for name, path in forms.items():
        # as evaluate runs them: each runtime's integer kernels only where measured to agree on this CPU
        ours = make_runner(load_model(path), runtime="openvino").run(batch)
        theirs = make_runner(load_model(path), runtime="onnxruntime").run(batch)
        assert [o.shape for o in ours] == [t.shape for t in theirs], name
        assert cosine(ours[0], theirs[0]) > (0.99999 if "int8" not in name else 0.999), name
    runner = OpenVinoRunner(dynamic)
    runner.run(batch), runner.run(batch[:1])
    assert set(runner._compiled) == {(4, 3, 256, 256), (1, 3, 256, 256)}  # a free batch: compiled per size


def test_evaluate_on_openvino_matches_onnxruntime_and_says_how_int8_ran(demo_int8, shapes_full, tmp_path):
    int8 = demo_int8("max", "tensorrt")["model"]
    result = CliRunner().invoke(app, ["evaluate", "--compare", str(int8), str(int8), "--yaml", str(shapes_full),
                                      "--runs", "0", "--json", str(tmp_path / "ort.json")])
    assert result.exit_code == 0, result.output
    on_ort = json.loads((tmp_path / "ort.json").read_text())["compare"][0]
    record = orinflow.evaluate(int8, shapes_full, runtime="openvino", runs=3, say=lambda m: None)
    assert record["runtime"] == "openvino" and record["versions"]["openvino"]
    assert record["metrics"]["mAP50-95"] == pytest.approx(on_ort["metrics"]["mAP50-95"], abs=0.01)
    details = record["runtime_details"]  # which path ran depends on the CPU; that it is said does not
    verdict = details["int8_kernels"]
    assert details["int8"] == verdict["kind"] and verdict["mode"] == "auto" and verdict["images"] >= 4
    said = [n for n in record.get("notes", []) if n.startswith("OpenVINO ran")]
    assert bool(said) == (verdict["used"] != "as written")
    assert (record.get("runtime_label") == "openvino (INT8 emulated)") == (details["int8"] == "exact")
    assert record["latency_ms"]["batch1"]["median"] > 0


def test_openvino_refuses_an_engine_and_names_a_missing_package(demo_onnx, tiny_shapes, tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "-m", str(engine), "--yaml", str(tiny_shapes), "--runtime", "openvino"])
    assert result.exit_code == 2 and "TensorRT engine" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error")]) == 1
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    for args in (["evaluate", "-m", str(demo_onnx), "--yaml", str(tiny_shapes), "--runtime", "openvino"],
                 ["deploy", "-m", str(demo_onnx), "--target", "openvino", "-o", str(tmp_path / "b")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "pip install openvino" in result.output, result.output
    assert not (tmp_path / "b").exists()
    with pytest.raises(OrinflowError, match="does not import"):
        make_runner(load_model(demo_onnx), runtime="openvino")


def test_compare_pairs_layers_across_runtimes(demo_int8, tiny_shapes, tmp_path):
    int8 = demo_int8("max", "tensorrt")["model"]
    record = orinflow.compare(int8, int8, tiny_shapes, images=2, runtime_b="openvino", output=tmp_path / "c",
                              say=lambda m: None)
    assert record["runtimes"] == ["auto", "openvino"] and record["paired_layers"] > 20
    assert record["head_output"]["cosine"] > 0.99
    first = record["layers"][0]
    assert first["cosine"] > 0.9999  # the input layer: both runtimes quantize the image alike
    with pytest.raises(OrinflowError, match="runtime-b 'tensorrt'; compare runs an ONNX side on auto, onnxruntime"):
        orinflow.compare(int8, int8, tiny_shapes, runtime_b="tensorrt", output=tmp_path / "d", say=lambda m: None)


def test_deploy_target_openvino_writes_an_x86_bundle_that_runs(demo_int8, demo_adapter, tiny_shapes, tmp_path):
    from orinflow.export.nms import NmsSpec

    int8 = demo_int8("max", "tensorrt")["model"]
    bundle = tmp_path / "x86"
    record = orinflow.deploy(int8, output=bundle, target="openvino", say=lambda m: None)
    assert record["target"] == "openvino" and sorted(p.name for p in bundle.iterdir()) == record["files"]
    subprocess.run(["bash", "-n", str(bundle / "bench.sh")], check=True)
    script = (bundle / "bench.sh").read_text()
    assert '"$BENCHMARK_APP"' in script and "-hint latency" in script and "'[1,3,256,256]'" in script
    result = subprocess.run([sys.executable, str(bundle / "infer.py"), "--eval", str(tiny_shapes)],
                            capture_output=True, text=True, cwd="/", check=False)
    assert result.returncode == 0, result.stderr
    on_bundle = json.loads(result.stdout.strip().splitlines()[-1])
    desktop = evaluate_model(load_model(int8), tiny_shapes, "val", EvalOptions(measure_latency=False,
                                                                                 runtime="openvino"))
    assert on_bundle["runtime"] == "openvino"
    assert on_bundle["metrics"]["mAP50-95"] == pytest.approx(desktop["metrics"]["mAP50-95"], abs=1e-9)
    # an end-to-end graph with TensorRT's NMS plugin: the plugin is removed, orinflow's NMS runs instead
    e2e = export_onnx(demo_adapter, tmp_path / "e2e.onnx", nms=NmsSpec(flavour="trt")).path
    record = orinflow.deploy(e2e, output=bundle, target="openvino", overwrite=True, say=lambda m: None)
    assert record["nms_removed"] and not any(n.op_type == "EfficientNMS_TRT"
                                             for n in onnx.load(str(bundle / "model.onnx")).graph.node)
    with pytest.raises(OrinflowError, match="--dla, --deepstream: TensorRT options"):
        orinflow.deploy(int8, output=tmp_path / "y", target="openvino", dla=0, deepstream=True, say=lambda m: None)

