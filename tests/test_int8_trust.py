"""An integer path is trusted only after it is measured to agree with the exact function (runtime/trust.py).

Which path a CPU ends up on differs between machines, so no test here asserts that a runtime's integer kernels
agree or disagree on the CPU it runs on. A disagreement is made on purpose instead (a form whose outputs are
perturbed, or OpenVINO capped to AVX2 kernels, whose 16-bit sums saturate on every x86 CPU), and what must hold
everywhere is checked: auto always gives the exact function, and the record, the table and the console say
which path ran and why.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from orinflow.cli import app
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.models import load_model
from orinflow.runtime import OrtRunner, trust
from orinflow.runtime.checked import checked_runner
from orinflow.runtime.openvino import OpenVinoRunner


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """A workspace of the test's own: no verdict cached by another test is read, none is left for another."""
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws" / "cache" / "int8_kernels"


def perturbed(runner_class, monkeypatch, scale: float = 0.3) -> None:
    """Every integer form of `runner_class` returns its outputs plus noise of `scale` times their spread."""
    original = runner_class.integer_forms

    class Noisy:
        def __init__(self, runner):
            self.runner = runner

        def __getattr__(self, name):
            return getattr(self.runner, name)

        def run(self, batch):
            rng = np.random.default_rng(0)
            return [out + scale * out.std() * rng.standard_normal(out.shape).astype(out.dtype)
                    for out in self.runner.run(batch)]

    monkeypatch.setattr(runner_class, "integer_forms", lambda self: {
        name: (lambda make=make: Noisy(make())) for name, make in original(self).items()})


def settled(path, runtime, images, **options):
    runner = checked_runner(path, runtime, **options)
    runner.settle(images)
    return runner


def first_images(fp32, tiny_shapes, count=4):
    from orinflow.data import load_dataset
    from orinflow.data.calibration import build_calibration

    return build_calibration(fp32.processing, load_dataset(tiny_shapes, "val"), count)


@pytest.mark.parametrize("runtime, target", [("openvino", "tensorrt"), ("onnxruntime", "cpu")])
def test_integer_kernels_that_disagree_are_not_trusted_and_the_record_says_why(runtime, target, demo_int8,
                                                                               tiny_shapes, fresh_cache, monkeypatch):
    model = load_model(demo_int8("max", target)["model"])
    exact = evaluate_model(model, tiny_shapes, "val", EvalOptions(measure_latency=False, runtime=runtime,
                                                                  int8_kernels="exact"))
    perturbed(OpenVinoRunner if runtime == "openvino" else OrtRunner, monkeypatch)
    record = evaluate_model(model, tiny_shapes, "val", EvalOptions(measure_latency=False, runtime=runtime))
    details = record["runtime_details"]
    assert details["int8"] == "exact" and details["int8_kernels"]["used"] == "exact"
    assert record["runtime_label"] == f"{runtime} (INT8 emulated)"
    assert record["metrics"] == exact["metrics"]  # the exact path's figures, not the perturbed kernels'
    note = next(n for n in record["notes"] if "disagree with the exact function" in n)
    measured = next(iter(details["int8_kernels"]["forms"].values()))
    assert f"cosine {measured['cosine']:.3f}" in note and measured["error"] > details["int8_kernels"]["tolerance"]
    assert details["int8_kernels"]["floor"], "the tolerance rests on the exact implementations' measured floor"
    assert list(fresh_cache.glob("*.json")), "the verdict is cached"


def test_forced_integer_kernels_run_and_print_the_measured_disagreement(demo_int8, tiny_shapes, fresh_cache,
                                                                        monkeypatch):
    perturbed(OpenVinoRunner, monkeypatch)
    model = demo_int8("max", "tensorrt")["model"]
    result = CliRunner().invoke(app, ["evaluate", "-m", str(model), "--yaml", str(tiny_shapes), "--runs", "0",
                                      "--runtime", "openvino", "--int8-kernels", "integer"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ran its integer kernels as asked" in text and "disagree with the model's exact function" in text
    assert "worst-channel error" in text and "(INT8 emulated)" not in text


def test_auto_gives_the_exact_function_on_every_cpu(demo_int8, fp32, tiny_shapes, fresh_cache):
    """Whatever this CPU's kernels do, auto's outputs are the exact function's within the rule's tolerance."""
    images = first_images(fp32, tiny_shapes)
    for target in ("tensorrt", "cpu"):
        path = Path(demo_int8("max", target)["model"])
        reference = OrtRunner(path, form="reference").run(images)
        for runner in (settled(path, "openvino", images), settled(path, "onnxruntime", images)):
            verdict = runner.verdict or {"tolerance": trust.MIN_TOLERANCE}
            assert trust.channel_error(reference, runner.run(images))["error"] <= verdict["tolerance"], runner.name


def test_exact_measures_nothing_and_a_cached_verdict_is_not_measured_again(demo_int8, fp32, tiny_shapes,
                                                                           fresh_cache, monkeypatch):
    images = first_images(fp32, tiny_shapes)
    path = Path(demo_int8("max", "tensorrt")["model"])
    first = settled(path, "openvino", images).verdict
    assert "cached" not in first and len(list(fresh_cache.glob("*.json"))) == 1

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(trust, "measure", measured_again)
    again = settled(path, "openvino", images)
    assert again.verdict["cached"] and again.verdict["used"] == first["used"] and again.form == first["used"]
    exact = settled(path, "openvino", images, int8_kernels="exact")
    assert exact.int8 == "exact" and exact.form == "exact" and exact.verdict["reason"].startswith("asked")
    # another ISA cap is another machine as far as the kernels go: its verdict has its own entry
    before = trust.cache_file(path, "openvino", "x")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert trust.cache_file(path, "openvino", "x") != before


def test_the_error_is_measured_per_channel():
    """A detector output whose small channels (scores) are wrong reads as wrong although the large channels
    (box coordinates) keep the cosine near 1."""
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(0, 640, (1, 4, 500)), rng.uniform(0, 0.01, (1, 3, 500))], 1)
    wrong = reference.copy()
    wrong[:, 4:] = rng.uniform(0, 0.01, (1, 3, 500))
    found = trust.channel_error([reference], [wrong])
    assert found["cosine"] > 0.9999 and found["error"] > 1.0
    assert trust.channel_error([reference], [reference])["error"] == 0.0
    assert trust.channel_error([reference], [reference[:, :6]])["error"] == float("inf")
    assert trust.probe_count(640) == 4 and trust.probe_count(256) == 16 and trust.probe_count(32) == 64


@pytest.mark.skipif("avx2" not in open("/proc/cpuinfo").read(), reason="OpenVINO's AVX2 cap needs an AVX2 CPU")
def test_openvino_capped_to_avx2_saturates_and_auto_falls_back(tmp_path):
    """The real libraries, no stand-in: oneDNN capped to AVX2 multiplies u8 x s8 pairs into 16 bits (vpmaddubsw),
    which saturates on this first layer on any x86 CPU. auto must measure that and run the exact path."""
    from test_openvino import first_layer_graph

    onnx.save(first_layer_graph(True), str(tmp_path / "m.onnx"))
    script = (
        "import sys, numpy as np\n"
        "from orinflow.runtime.checked import checked_runner\n"
        "from orinflow.runtime import OrtRunner\n"
        "from orinflow.runtime.trust import channel_error\n"
        "x = np.random.default_rng(1).random((4, 3, 64, 64), dtype=np.float32)\n"
        f"path = {str(tmp_path / 'm.onnx')!r}\n"
        "reference = OrtRunner(path, form='reference').run(x)\n"
        "auto = checked_runner(path, 'openvino', threads=1)\n"
        "forced = checked_runner(path, 'openvino', threads=1, int8_kernels='integer')\n"
        "auto.settle(x), forced.settle(x)\n"
        "print(auto.int8, auto.verdict['forms']['as written']['agrees'], forced.int8,\n"
        "      channel_error(reference, auto.run(x))['error'] <= auto.verdict['tolerance'],\n"
        "      channel_error(reference, forced.run(x))['error'] > auto.verdict['tolerance'])\n")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ORINFLOW_WORKSPACE=str(tmp_path / "ws"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exact", "False", "integer", "True", "True"]


def test_compare_says_when_probing_hides_a_departure_and_locates_it(demo_int8, tiny_shapes, fresh_cache, tmp_path,
                                                                    monkeypatch):
    """A runtime that computes one convolution wrongly unless its layers are read (as OpenVINO 2026.4's signed
    quantizer after a Concat does): compare must say that the probed run is not the evaluated one, and name the
    convolution, found by compiling prefixes. The defect is put into OpenVINO's exact path, which is exact on
    every CPU, so that nothing else departs."""
    import orinflow
    from orinflow.io import private_folder
    from orinflow.optimize.common.graph import fold_weight_qdq

    path = Path(demo_int8("max", "tensorrt")["model"])
    graph = onnx.load(str(path))
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    defective = convs[len(convs) // 3]
    original = OpenVinoRunner._read

    def read_with_a_defect(self, form):
        if self.extra_outputs or form != "exact":
            return original(self, form)
        model = onnx.load(str(self.path))
        for node in model.graph.node:  # the convolution's weight comes out negated and four times too large
            if node.name == defective.name:
                dq = next(n for n in model.graph.node if n.output[0] == node.input[1])
                q = next(n for n in model.graph.node if n.output[0] == dq.input[0])
                weight = next(t for t in model.graph.initializer if t.name == q.input[0])
                weight.CopyFrom(onnx.numpy_helper.from_array(-4 * onnx.numpy_helper.to_array(weight), weight.name))
        fold_weight_qdq(model)
        with private_folder() as folder:
            onnx.save(model, str(folder / "m.onnx"))
            return self.core.read_model(str(folder / "m.onnx"))

    monkeypatch.setattr(OpenVinoRunner, "_read", read_with_a_defect)
    record = orinflow.compare(path, path, tiny_shapes, images=8, runtime_b="openvino", int8_kernels="exact",
                              output=tmp_path / "c", say=lambda m: None)
    [effect] = record["probing"]
    assert effect["side"] == "B" and effect["changed"]["error"] > effect["tolerance"]
    assert effect["departs_at"]["tensor"] == defective.output[0]
    assert len(effect["prefixes"]) <= 2 + np.log2(len(record["layers"]) + 1)  # bisection, not a scan
    assert any(defective.output[0] in note and "departs" in note for note in record["notes"])
    monkeypatch.setattr(OpenVinoRunner, "_read", original)
    clean = orinflow.compare(path, path, tiny_shapes, images=4, runtime_b="openvino", int8_kernels="exact",
                             output=tmp_path / "d", say=lambda m: None)
    assert clean["probing"] == []


def test_cpu_target_records_its_kernels_and_reduce_range_gives_7_bit_weights(fp32, calib, fresh_cache, tmp_path,
                                                                             monkeypatch):
    import orinflow
    from orinflow.optimize.common.graph import GraphIndex, constant_values

    np.save(tmp_path / "c.npy", calib)
    said = []
    narrow = orinflow.quantize(fp32.path, calib=tmp_path / "c.npy", target="cpu", method="max", reduce_range=True,
                               output=tmp_path / "narrow.onnx", say=said.append)
    assert narrow["quantization"]["reduce_range"] and narrow["int8_kernels"]["onnxruntime"]["kind"] in ("integer",
                                                                                                        "exact")
    graph = onnx.load(str(tmp_path / "narrow.onnx"))
    values = constant_values(GraphIndex(graph))
    weights = [values[n.input[0]] for n in graph.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in values and values[n.input[0]].dtype == np.int8 and values[n.input[0]].ndim == 4]
    # |w| <= 64: two u8 x s8 products sum to at most 2 * 255 * 64 = 32640, inside 16 bits
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)
    perturbed(OrtRunner, monkeypatch)
    wide = orinflow.quantize(fp32.path, calib=tmp_path / "c.npy", target="cpu", method="max",
                             output=tmp_path / "wide.onnx", say=said.append)
    assert wide["int8_kernels"]["onnxruntime"]["kind"] == "exact"
    assert any("disagree" in line and "--reduce-range" in line for line in said)
    from orinflow.io import record_path

    assert json.loads(record_path(tmp_path / "wide.onnx").read_text())["int8_kernels"] == wide["int8_kernels"]
