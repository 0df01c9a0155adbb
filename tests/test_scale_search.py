"""--method search: per-quantizer calibration choice, measured on the embedded detector."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from orinflow.cli import app
from orinflow.data.calibration import save_calibration
from orinflow.errors import OrinflowError
from orinflow.optimize.common.graph import GraphIndex
from orinflow.optimize.common.probes import HeadProbe, head_tensors, sqnr_db
from orinflow.optimize.quantize.ptq import QuantizeSpec, align_concat_scales, quantize_onnx
from orinflow.optimize.quantize import scale_search
from orinflow.optimize.quantize.scale_search import apply_scales, mse_clip, scale_units

runner = CliRunner()
SEARCH_IMAGES = 4  # calibration images that score each trial here


@pytest.fixture(scope="module")
def max_model(demo_int8):
    return onnx.load(demo_int8("max", "tensorrt")["model"])


@pytest.fixture(scope="module")
def searched_by_the_cli(demo_onnx, calib, tmp_path_factory):
    """`orinflow quantize --method search`, run once: its output, its record and the model it wrote."""
    import json

    work = tmp_path_factory.mktemp("search")
    save_calibration(calib, work / "calib.npy")
    out = work / "searched.onnx"
    with pytest.MonkeyPatch.context() as patch:  # the mechanics on 4 images, not the search's quality
        patch.setattr(scale_search, "SEARCH_IMAGES", SEARCH_IMAGES)
        result = runner.invoke(app, ["quantize", "-m", str(demo_onnx), "--calib", str(work / "calib.npy"),
                                     "--method", "search", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.with_suffix(".json").read_text()), out


@pytest.fixture(scope="module")
def searched(searched_by_the_cli):
    _, record, out = searched_by_the_cli
    return record, onnx.load(str(out))


def _expected_error(samples: np.ndarray, clip: float) -> float:
    step = clip / 127
    return float(np.mean((np.clip(np.round(samples / step), -127, 127) * step - samples) ** 2))


def test_mse_clip_cuts_outliers_and_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(0, 4, 200_000)
    hist = np.histogram(uniform, 2048, (0, uniform.max()))[0]
    assert mse_clip(uniform.max(), hist) > 0.95 * uniform.max()
    heavy = np.concatenate([np.abs(rng.laplace(0, 1, 200_000)), [200.0]])
    hist = np.histogram(heavy, 2048, (0, heavy.max()))[0]
    clip = mse_clip(heavy.max(), hist)
    grid = np.linspace(2, 200, 100)
    simulated = [_expected_error(heavy, c) for c in grid]
    assert clip < 0.75 * heavy.max()
    assert _expected_error(heavy, clip) <= 1.05 * min(simulated)  # the histogram's optimum is the sampled one


def test_concat_alignment_leaves_no_unused_scales(max_model):
    model = onnx.ModelProto()
    model.CopyFrom(max_model)
    unit = next(u for u in scale_units(model) if len(u.tensors) > 1)  # the inputs of one concat
    nodes = {n.name: n for n in model.graph.node}
    q = next(nodes[n] for n in unit.nodes if nodes[n].op_type == "QuantizeLinear")
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(unit.scale * 3, np.float32), "odd_scale"))
    q.input[1] = dq.input[1] = "odd_scale"
    assert align_concat_scales(model) == 1
    read = {name for node in model.graph.node for name in node.input}
    assert [t.name for t in model.graph.initializer if t.name not in read] == []
    assert all(u.scale == pytest.approx(unit.scale * 3) for u in scale_units(model) if set(u.tensors) == set(unit.tensors))


def test_units_cover_every_activation_quantizer_once_and_tie_concat_inputs(max_model):
    units = scale_units(max_model)
    index = GraphIndex(max_model)
    activation_qs = {n.name for n in index.nodes if n.op_type == "QuantizeLinear"
                     and n.input[0] not in index.initializers}
    members = [name for u in units for name in u.nodes if name in activation_qs]
    assert sorted(members) == sorted(activation_qs)
    unit_of = {name: k for k, u in enumerate(units) for name in u.nodes}
    tied = 0
    for node in index.nodes:
        if node.op_type == "Concat":
            feeding = {unit_of[p.name] for t in node.input if (p := index.producer.get(t)) is not None
                       and p.name in unit_of}
            assert len(feeding) <= 1, node.name
            tied += len(feeding)
    assert tied, "the embedded detector has quantized concat inputs"


def test_search_raises_head_sqnr_and_writes_what_it_measured(searched, max_model, fp32, calib):
    record, model = searched
    search = record["scale_search"]
    assert search["sqnr_db"] >= search["sqnr_db_max"] and search["trials"] > 0
    assert sum(search["chosen"].values()) == len(search["units"])
    reference = onnx.load(str(fp32.path))
    probe = HeadProbe(np.asarray(calib[:SEARCH_IMAGES]), head_tensors(reference, "detect"), None)
    truth = probe.outputs(reference)
    # the written model scores what the search measured, and max calibration what it started from
    assert sqnr_db(truth, probe.outputs(model)) == pytest.approx(search["sqnr_db"], abs=1e-3)
    assert sqnr_db(truth, probe.outputs(max_model)) == pytest.approx(search["sqnr_db_max"], abs=1e-3)
    assert record["qdq_report"]["lint"] == []
    chosen = {tuple(u["tensors"]): u["scale"] for u in search["units"]}
    for unit in scale_units(model):  # every scale is one of its unit's candidates, shared by its Q and DQ
        assert unit.scale == pytest.approx(chosen[tuple(unit.tensors)], rel=1e-6)
    assert all(u["method"] == "max" or u["scale"] != u["max_scale"] for u in search["units"])


def test_apply_scales_touches_only_the_changed_units(max_model):
    units = scale_units(max_model)
    scales = [u.scale for u in units]
    scales[0] *= 0.5
    changed = scale_units(apply_scales(max_model, units, scales))
    assert changed[0].scale == pytest.approx(units[0].scale * 0.5)
    assert [u.scale for u in changed[1:]] == [u.scale for u in units[1:]]
    weights = {t.name: numpy_helper.to_array(t) for t in max_model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in apply_scales(max_model, units, scales).graph.initializer}
    assert all(np.array_equal(after[k], v) for k, v in weights.items() if k in after)


def test_search_is_for_tensorrt_int8_only(fp32, calib, tmp_path):
    for spec in (QuantizeSpec(method="search", target="cpu"), QuantizeSpec(method="search", mode="fp8")):
        with pytest.raises(OrinflowError, match="--method search"):
            quantize_onnx(fp32, calib, spec, tmp_path / "x.onnx")
        assert not (tmp_path / "x.onnx").exists()


def test_quantize_cli_method_search(searched_by_the_cli):
    output, _, out = searched_by_the_cli
    assert "scale search: head SQNR" in output and out.is_file()


def test_ptq_refuses_search_on_cpu_before_any_work(fp32, tiny_shapes, tmp_path):
    from orinflow.evaluate import EvalOptions
    from orinflow.optimize.quantize.route import run_ptq

    with pytest.raises(OrinflowError, match="--method search"):
        run_ptq(fp32, tiny_shapes, "train", tiny_shapes, "val", tmp_path / "ptq", ["max", "search"],
                ["tensorrt", "cpu"], QuantizeSpec(), 4, EvalOptions(measure_latency=False), say=lambda m: None)
    assert not (tmp_path / "ptq").exists()
