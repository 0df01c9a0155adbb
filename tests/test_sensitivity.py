"""Quantization groups, layer sensitivity and the accuracy budget, on the embedded detector and a classifier."""
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app
from orinflow.data import Dataset, load_dataset
from orinflow.data.calibration import build_calibration
from orinflow.errors import OrinflowError
from orinflow.models import load_model
from orinflow.optimize.common.graph import GraphIndex
from orinflow.optimize.quantize.groups import dequantize_groups, quantization_groups
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx
from orinflow.optimize.common.qdq_report import ComputeNode, qdq_report
from orinflow.optimize.quantize.sensitivity import (BudgetSpec, HeadProbe, SensitivityOptions, cache_key, fit_budget,
                                           head_tensors, measure_sensitivity, sqnr_db)

runner = CliRunner()
# The CLI's defaults but every selection image: `quantize --max-drop --select-images 0` reads the ranking that
# the module measures once, from the workspace's cache.
FAST = SensitivityOptions(select_images=0)


@pytest.fixture(scope="module")
def select(tiny_shapes):
    return load_dataset(tiny_shapes, "train")


@pytest.fixture(scope="module", params=["tensorrt", "cpu"])
def quantized(request, demo_int8):
    return request.param, onnx.load(demo_int8("max", request.param)["model"])


@pytest.fixture
def private_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory):
    """One workspace for the tests of the embedded detector's ranking: its sensitivity cache is measured once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORINFLOW_WORKSPACE", str(tmp_path_factory.mktemp("ws")))
        yield


@pytest.fixture(scope="module")
def study(fp32, calib, select, shared_workspace):
    """The embedded detector's ranking, measured (not read from a cache) in the shared workspace."""
    return measure_sensitivity(fp32, calib, QuantizeSpec(method="max"), select, FAST, say=lambda m: None)


def test_every_quantized_conv_is_in_exactly_one_group(quantized):
    _, model = quantized
    groups = quantization_groups(model)
    index = GraphIndex(model)
    quantized_convs = {n.name for n in index.nodes if n.op_type == "Conv" and ComputeNode(index, n).quantized}
    members = [c for g in groups for c in g.compute]
    assert sorted(members) == sorted(quantized_convs) and len(members) == len(set(members))
    dqs = [q.dq for g in groups for q in g.quantizers]
    assert len(dqs) == len(set(dqs)) == sum(n.op_type == "DequantizeLinear" for n in index.nodes)


def test_dequantizing_every_group_gives_back_fp32(quantized, fp32, calib):
    target, model = quantized
    reference_model = onnx.load(str(fp32.path))
    probe = HeadProbe(np.asarray(calib[:2]), head_tensors(reference_model, "detect"), None)
    reference = probe.outputs(reference_model)
    restored = probe.outputs(dequantize_groups(model, quantization_groups(model)))
    int8 = probe.outputs(model)
    # tensorrt: the float weights are still behind their Q; cpu: stored int8 weights come back dequantized
    limit = 1e-4 if target == "tensorrt" else 0.05
    assert all(float(np.abs(a - b).max()) <= limit * max(1.0, float(np.abs(a).max()))
               for a, b in zip(reference, restored))
    assert sqnr_db(reference, restored) > sqnr_db(reference, int8) + 10


def test_taking_out_one_group_keeps_tensorrt_fusions(quantized):
    target, model = quantized
    groups = quantization_groups(model)
    for group in groups:
        cut = dequantize_groups(model, [group])
        onnx.checker.check_model(cut)
        report = qdq_report(cut, target, "int8", set())
        if target == "tensorrt":  # the lint is TensorRT's fusion rules
            assert report["lint"] == [], (group.name, report["lint"])
        assert not set(group.compute) & {c for g in groups if g is not group for c in g.compute}
        assert set(group.compute) <= set(report["high_precision_compute_nodes"])


def test_sqnr():
    ref = [np.ones((2, 3)), np.full((4,), 2.0)]
    assert sqnr_db(ref, ref) == 99.0
    noisy = [r + 0.1 * np.sign(r) for r in ref]
    assert 15 < sqnr_db(ref, noisy) < 25


def test_sensitivity_ranks_groups_and_caches(study, fp32, calib, select, shared_workspace):
    record = study
    gains = [g["gain_db"] for g in record["groups"]]
    assert gains == sorted(gains, reverse=True) and len(gains) >= 10
    assert record["lint"] == [] and not record["cached"]
    measured = [g for g in record["groups"] if "all_but_mAP50-95" in g]
    assert len(measured) == FAST.top and measured == record["groups"][:FAST.top]
    assert abs(sum(g["flop_share"] for g in record["groups"]) - 1) < 1e-6
    again = measure_sensitivity(fp32, calib, QuantizeSpec(method="max"), select, FAST, say=lambda m: None)
    assert again["cached"] and again["groups"] == record["groups"]
    # a different calibration set (or method) is a different measurement: its own cache entry
    keys = {cache_key(fp32, c, QuantizeSpec(method=m), select, FAST) for c, m in ((calib, "max"), (calib[:4], "max"),
                                                                                  (calib, "entropy"))}
    assert record["key"] in keys and len(keys) == 3


def test_budget_falls_back_groups_and_writes_the_model(fp32, calib, select, tmp_path, study):
    out = tmp_path / "budget.onnx"
    record = fit_budget(fp32, calib, QuantizeSpec(method="max"), select,
                        BudgetSpec(max_drop=0.0, max_fallback=1.0, max_steps=3), out, FAST, say=lambda m: None)
    budget = record["budget"]
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["budget"] == budget
    assert 1 <= len(budget["steps"]) <= 3
    assert budget["final"] >= budget["full_int8"]
    assert budget["met"] == (budget["drop_points"] <= 0.0 + 1e-9)
    kept = [s["group"] for s in budget["steps"] if s["kept"]]
    assert kept == budget["fallback"]
    model = onnx.load(str(out))
    assert set(budget["fallback_compute"]) <= set(record["qdq_report"]["high_precision_compute_nodes"])
    assert record["qdq_report"]["lint"] == []
    assert json.loads({p.key: p.value for p in model.metadata_props}["orinflow.fallback"]) == kept


def test_budget_within_a_zero_cap_reports_not_met_and_still_writes(fp32, calib, select, tmp_path, study):
    out = tmp_path / "capped.onnx"
    record = fit_budget(fp32, calib, QuantizeSpec(method="max"), select,
                        BudgetSpec(max_drop=-0.0, max_fallback=0.0, max_steps=2), out, FAST, say=lambda m: None)
    budget = record["budget"]
    assert out.is_file() and budget["int8_flop_share"] == pytest.approx(budget["full_int8_flop_share"])
    flopped = [s for s in budget["steps"] if s["reason"] == "over --max-fallback"]
    assert budget["fallback"] == [] or all(s["flop_share"] == 0 for s in budget["steps"] if s["kept"])
    if budget["drop_points"] > 0:
        assert not budget["met"] and flopped


def test_budget_refuses_bad_input(fp32, calib, select, tmp_path):
    with pytest.raises(OrinflowError, match="--max-drop"):
        BudgetSpec(max_drop=-0.5).validate()
    with pytest.raises(OrinflowError, match="--max-fallback"):
        BudgetSpec(max_drop=0.3, max_fallback=1.5).validate()
    unlabelled = Dataset("folder", select.images)
    with pytest.raises(OrinflowError, match="no labels"):
        fit_budget(fp32, calib, QuantizeSpec(), unlabelled, BudgetSpec(0.3), tmp_path / "x.onnx", FAST)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_sensitivity_and_budget(fp32, calib, tiny_shapes, tmp_path, study):
    """The command takes the ranking measured with the same inputs from the workspace's cache."""
    calib_path = tmp_path / "calib.npy"
    np.save(calib_path, calib)
    yaml = tiny_shapes
    result = runner.invoke(app, ["sensitivity", "-m", str(fp32.path), "--calib", str(calib_path), "--yaml", str(yaml),
                                 "--method", "max", "--split", "train", "--sqnr-images", str(FAST.sqnr_images), "--top", str(FAST.top),
                                 "--select-images", str(FAST.select_images), "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "read from cache" in result.output
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 1000
    assert "sensitivity of" in result.output
    record = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert record["select_images"] == len(load_dataset(yaml, "train"))

    out = tmp_path / "b.onnx"
    result = runner.invoke(app, ["quantize", "-m", str(fp32.path), "--calib", str(calib_path), "--method", "max",
                                 "--max-drop", "5", "--select-yaml", str(yaml), "--select-split", "train",
                                 "--select-images", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "budget 5.00 points" in result.output and out.is_file() and "read from cache" in result.output

    for args, message in ((["--max-drop", "-1", "--select-yaml", str(yaml)], "--max-drop must be >= 0"),
                          (["--max-drop", "0.3"], "--select-yaml"),
                          (["--max-drop", "0.3", "--select-yaml", str(yaml), "--max-fallback", "2"], "--max-fallback")):
        bad = tmp_path / "bad.onnx"
        result = runner.invoke(app, ["quantize", "-m", str(fp32.path), "--calib", str(calib_path), "-o", str(bad),
                                     *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not bad.exists()


def test_report_has_sensitivity_and_budget_sections(fp32, calib, select, tmp_path, study):
    from orinflow.evaluate import EvalOptions, evaluate_model
    from orinflow.io import write_json
    from orinflow.report import write_report
    from orinflow.report.sensitivity import write_sensitivity

    write_sensitivity(study, tmp_path / "records" / "sens")
    out = tmp_path / "b.onnx"
    fit_budget(fp32, calib, QuantizeSpec(method="max"), select, BudgetSpec(max_drop=50.0), out, FAST,
               say=lambda m: None)
    for model in (fp32.path, out):
        write_json(tmp_path / "records" / f"eval_{model.stem}.json",
                   evaluate_model(load_model(model), select, "train", EvalOptions(measure_latency=False)))
    written = write_report([tmp_path / "records"], tmp_path / "report")
    text = written["markdown"].read_text()
    assert "## Accuracy budgets" in text and "b.onnx: budget 50.00 points met" in text
    assert "sensitivity of" in text and study["groups"][0]["name"] in text
    assert study["groups"][0]["name"] in written["html"].read_text()


CONV_TRANSPOSE_HEAD = """
nc: 3
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, C2f, [32, True]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, C2f, [64, True]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, SPPF, [64, 5]]
head:
  - [-1, 1, ConvTranspose, [64, 2, 2]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 1, C2f, [64]]
  - [-1, 1, ConvTranspose, [32, 2, 2]]
  - [[-1, 2], 1, Concat, [1]]
  - [-1, 1, C2f, [32]]
  - [[12, 9, 6], 1, Detect, [nc]]
"""


def _graph_properties_hold(fp32_model, quantized_path, calib, task):
    """Lint 0 on the full model and on every single-group fallback; all groups out gives FP32 back."""
    model = onnx.load(str(quantized_path))
    report = qdq_report(model, "tensorrt", "int8", set())
    assert report["lint"] == [], report["lint"]
    groups = quantization_groups(model)
    assert groups and sum(len(g.compute) for g in groups) == report["quantized_compute_nodes"]
    for group in groups:
        assert qdq_report(dequantize_groups(model, [group]), "tensorrt", "int8", set())["lint"] == [], group.name
    reference = onnx.load(str(fp32_model.path))
    probe = HeadProbe(np.asarray(calib[:1]), head_tensors(reference, task), None)
    restored = probe.outputs(dequantize_groups(model, groups))
    assert sqnr_db(probe.outputs(reference), restored) > 80


# YOLOv8 is the embedded detector (above); YOLO11n has YOLO26n's blocks and the embedded detector's DFL head
@pytest.mark.parametrize("family", ["yolo26n.yaml", "convtranspose"])
def test_groups_on_ultralytics_families_built_from_yaml(family, tmp_path, tiny_shapes):
    from orinflow.export import export_onnx

    if family == "convtranspose":  # a ConvTranspose upsampler: per-channel weight scales on axis 1
        (tmp_path / "ct.yaml").write_text(CONV_TRANSPOSE_HEAD)
        family = str(tmp_path / "ct.yaml")
    adapter = load_model(family, imgsz=128)
    fp32 = load_model(export_onnx(adapter, tmp_path / "m.onnx").path)
    calib = build_calibration(fp32.processing, load_dataset(tiny_shapes, "train"), 4)
    out = tmp_path / "q.onnx"
    quantize_onnx(fp32, calib, QuantizeSpec(method="max"), out)
    _graph_properties_hold(fp32, out, calib, "detect")
    model = onnx.load(str(out))
    index = GraphIndex(model)
    for node in (n for n in index.nodes if n.op_type == "ConvTranspose"):
        compute = ComputeNode(index, node)
        assert compute.quantized
        from onnx import numpy_helper

        scale = numpy_helper.to_array(index.initializers[compute.weight_dq.input[1]])
        assert scale.size == compute.output_channels > 1


def test_sensitivity_on_a_classifier_with_hard_swish_and_squeeze_excite(tmp_path, class_tree, private_workspace):
    from orinflow.export import export_onnx

    adapter = load_model(None, arch="mobilenet_v3_small", imgsz=64)
    fp32 = load_model(export_onnx(adapter, tmp_path / "mnv3.onnx").path)
    select = load_dataset(class_tree)
    calib = build_calibration(fp32.processing, select, 8)
    out = tmp_path / "q.onnx"
    quantized = quantize_onnx(fp32, calib, QuantizeSpec(method="max"), out)
    _graph_properties_hold(fp32, out, calib, "classify")
    record = measure_sensitivity(fp32, calib, QuantizeSpec(method="max"), select,
                                 SensitivityOptions(sqnr_images=2, select_images=0, top=1), say=lambda m: None,
                                 quantized=(onnx.load(out), quantized))
    assert record["metric"] == "top1" and record["head_tensors"] == [o.name for o in onnx.load(out).graph.output]
    assert "all_but_top1" in record["groups"][0]


def test_ptq_route_under_a_budget(tiny_shapes, tmp_path, study):
    """The route exports the embedded detector as `fp32` was and calibrates on the same 8 images, so its budget
    reads the module's cached ranking instead of measuring it again."""
    result = runner.invoke(app, ["ptq", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes),
                                 "--split", "train", "--val-split", "val", "-n", "8", "--method", "max",
                                 "--target", "tensorrt", "--runs", "0", "--max-drop", "50",
                                 "--select-yaml", str(tiny_shapes), "--select-split", "train", "--select-images", "0",
                                 "-o", str(tmp_path / "ptq")])
    assert result.exit_code == 0, result.output
    route = json.loads((tmp_path / "ptq" / "ptq_record.json").read_text())
    budget = route["variants"][0]["budget"]
    assert budget["met"] and budget["select_data"].startswith("shapes:train") and budget["max_drop"] == 50
    assert "budget 50.00 points" in result.output and "read from cache" in result.output


def test_a_budget_chooses_its_calibration_unless_a_method_is_given():
    from orinflow.optimize.quantize.calib_choice import candidate_methods
    from orinflow.optimize.quantize.ptq import default_method
    from orinflow.optimize.quantize.route import check_variants, target_methods

    base = QuantizeSpec()
    assert default_method("tensorrt", budget=True) == "auto" and default_method("cpu", budget=True) == "auto"
    assert default_method("tensorrt") == "entropy" and default_method("tensorrt", "fp8", budget=True) == "entropy"
    assert [target_methods(base, None, t, True) for t in ("tensorrt", "cpu")] == [["auto"], ["auto"]]
    assert target_methods(base, ["max"], "tensorrt", True) == ["max"]
    check_variants(base, None, ["tensorrt", "cpu"], budget=True)
    with pytest.raises(OrinflowError, match="--method search"):
        check_variants(base, ["search"], ["cpu"], budget=True)
    assert candidate_methods(base) == ["max", "percentile", "entropy", "mse", "search"]
    assert candidate_methods(QuantizeSpec(target="cpu")) == ["max", "percentile", "entropy"]
    assert candidate_methods(base, ["search", "max"]) == ["max", "search"]  # cheapest first, whatever the order
    with pytest.raises(OrinflowError, match="--methods search: under --max-drop the cpu target chooses among"):
        candidate_methods(QuantizeSpec(target="cpu"), ["search"])
    with pytest.raises(OrinflowError, match="--method auto chooses"):
        quantize_onnx(None, np.zeros((1, 3, 8, 8), np.float32), QuantizeSpec(method="auto"), None)


def trial(method, met, share, final):
    return (method, {"budget": {"met": met, "int8_flop_share": share, "final": final, "drop_points": 0.2,
                                "max_drop": 0.5}}, None)


def test_the_winner_meets_the_budget_with_the_most_int8():
    from orinflow.optimize.quantize.calib_choice import _why, _winner

    assert _winner([trial("entropy", True, 0.95, 0.50), trial("search", True, 0.97, 0.49)])[0] == "search"
    assert _winner([trial("entropy", True, 0.97, 0.50), trial("search", True, 0.97, 0.49)])[0] == "entropy"
    assert _winner([trial("entropy", False, 1.0, 0.50), trial("search", True, 0.90, 0.49)])[0] == "search"
    missed = [trial("entropy", False, 0.9, 0.47), trial("search", False, 0.9, 0.48)]
    assert _winner(missed)[0] == "search" and "comes closest" in _why("search", missed)
    assert "the only finalist that meets" in _why("search", [trial("entropy", False, 1.0, 0.5),
                                                              trial("search", True, 0.9, 0.49)])


def test_auto_measures_each_calibration_and_keeps_the_record(fp32, calib, select, tmp_path, shared_workspace):
    """--method auto on the embedded detector: every candidate's full-INT8 selection score, cheapest first; the
    best one alone when it meets the budget with no group in float, else the fallback run on the best two; the
    written model is the winner's, and the record says why."""
    from orinflow.optimize.quantize.calib_choice import budgeted

    out = tmp_path / "auto.onnx"
    made = budgeted(fp32, calib, QuantizeSpec(method="auto"), select, BudgetSpec(max_drop=0.0, max_steps=2), out,
                    FAST, say=lambda m: None, methods=["max", "percentile", "mse"])
    choice = made["calibration_choice"]
    assert [c["method"] for c in choice["candidates"]] == ["max", "percentile", "mse"]
    best = sorted(choice["candidates"], key=lambda c: -c["full_int8"])
    meets = best[0]["drop_points"] <= 0.0
    assert choice["fallback_needed"] == (not meets)
    expected = [best[0]["method"]] if meets else [c["method"] for c in best[:2]]
    assert [f["method"] for f in choice["finalists"]] == expected
    assert made["quantization"]["method"] == choice["chosen"] in expected and choice["why"]
    assert json.loads(out.with_suffix(".json").read_text())["calibration_choice"]["chosen"] == choice["chosen"]
    assert onnx.load(out).graph.node  # the winner's model, written


def test_a_budget_missed_with_another_method_points_at_search(fp32, calib, select, private_workspace):
    """The closing message offers search, with its full-INT8 selection figure when an earlier run measured it on the
    same model, calibration and selection images (read from the cache, never measured unasked)."""
    import orinflow.cli.quantization as cli
    from orinflow.io import write_json
    from orinflow.optimize.quantize.sensitivity import (_measured_search_start, cache_dir, cache_key,
                                                        selection_subset)

    subset = selection_subset(select, FAST.select_images, FAST.seed)
    assert _measured_search_start(fp32, calib, QuantizeSpec(method="max"), subset, FAST) is None  # nothing measured
    key = cache_key(fp32, calib, QuantizeSpec(method="search"), subset, FAST)
    write_json(cache_dir() / f"{key}.json", {"metric": "mAP50-95", "full_int8": {"mAP50-95": 0.9712}})
    assert _measured_search_start(fp32, calib, QuantizeSpec(method="max"), subset, FAST) == 0.9712
    assert _measured_search_start(fp32, calib, QuantizeSpec(method="search"), subset, FAST) is None
    budget = {"max_drop": 0.3, "met": False, "metric": "mAP50-95", "select_data": "shapes:train", "fp32": 0.98,
              "full_int8": 0.96, "final": 0.965, "drop_points": 1.5, "fallback": [], "fallback_precision": "fp32",
              "int8_flop_share": 1.0, "max_fallback": 0.1, "max_steps": 12, "search_full_int8": 0.9712}
    with cli.console.capture() as captured:
        cli._print_budget(budget, "max")
    assert "--method search starts from 0.9712" in captured.get() and "max's 0.9600" in captured.get()
    with cli.console.capture() as captured:
        cli._print_budget(dict(budget, search_full_int8=None), "max")
    assert "--method search" in captured.get() and "starts from" not in captured.get()


def test_auto_and_methods_are_refused_where_they_mean_nothing(fp32, tmp_path):
    out = tmp_path / "x.onnx"
    for args, message in ((["--method", "auto"], "--method auto chooses the calibration by measurement"),
                          (["--methods", "max,entropy"], "--methods narrows the calibrations --method auto tries"),
                          (["--method", "max", "--methods", "max", "--max-drop", "1", "--select-yaml", "x.yaml"],
                           "--method max names one already"),
                          (["--methods", "search", "--target", "cpu", "--max-drop", "1", "--select-yaml", "x.yaml"],
                           "the cpu target chooses among max, percentile, entropy")):
        result = runner.invoke(app, ["quantize", "-m", str(fp32.path), "--yaml", "x.yaml", "-o", str(out), *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert not out.exists()
