"""Jetson bundle: trtexec flags checked against what each model actually contains; infer.py = evaluate."""
import json
from pathlib import Path
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app
from orinflow.data import load_dataset
from orinflow.data.calibration import build_calibration
from orinflow.deploy.bundle import write_bundle
from orinflow.deploy.trtexec import BuildOptions
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.evaluate.accuracy import predictions
from orinflow.export import export_onnx
from orinflow.models import load_model
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx
from orinflow.optimize.train.config import QATConfig
from orinflow.optimize.sparsity.sat import _with_module, sat_stage
from orinflow.optimize.common.sparse24 import sparsity_report
from orinflow.runtime import OrtRunner


def script_args(path) -> list[str]:
    """The trtexec arguments of a generated script (after `bash -n` says it parses)."""
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text().replace("\\\n", " ")
    return [arg for line in text.splitlines() if line.startswith('"$TRTEXEC"') for arg in line.split()[1:]]


def graph_facts(path) -> dict:
    """Read independently of orinflow.deploy: Q/DQ present, 2:4 layers, input name and dims."""
    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    return {"qdq": any(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "sparse_layers": sparsity_report(model)["sparse_layers"], "input": graph_input.name, "dims": dims}


@pytest.fixture(scope="module")
def variants(demo_adapter, tiny_shapes, demo_onnx, tmp_path_factory):
    """FP32, PTQ INT8 Q/DQ, 2:4 sparse INT8, and dynamic-batch exports of the demo detector."""
    work = tmp_path_factory.mktemp("variants")
    calib = build_calibration(load_model(demo_onnx).processing, load_dataset(tiny_shapes, "train"), 4)
    int8 = quantize_onnx(load_model(demo_onnx), calib, QuantizeSpec(), work / "int8.onnx")["model"]
    sparse, _, _ = sat_stage(demo_adapter, load_dataset(tiny_shapes, "train"), "magnitude", QATConfig(epochs=0),
                          work / "s.pt")
    sparse_fp32 = export_onnx(_with_module(demo_adapter, sparse), work / "sparse.onnx").path
    sparse_int8 = quantize_onnx(load_model(sparse_fp32), calib, QuantizeSpec(), work / "sparse_int8.onnx")["model"]
    dynamic = export_onnx(demo_adapter, work / "dynamic.onnx", dynamic=True).path
    int8, sparse_int8 = Path(int8), Path(sparse_int8)
    return {"fp32": demo_onnx, "int8": int8, "sparse_int8": sparse_int8, "dynamic": dynamic}


@pytest.mark.parametrize("name", ["fp32", "int8", "sparse_int8", "dynamic"])
def test_build_flags_match_the_model(variants, name, tmp_path):
    path = variants[name]
    facts = graph_facts(path)
    options = BuildOptions(opt_batch=4, max_batch=8) if name == "dynamic" else BuildOptions()
    write_bundle(path, tmp_path / "b", options)
    args = script_args(tmp_path / "b" / "build_engine.sh")
    assert "--onnx=model.onnx" in args and "--saveEngine=model.engine" in args
    assert "--exportLayerInfo=layers.json" in args and "--exportProfile=profile.json" in args
    assert ("--stronglyTyped" in args) == facts["qdq"]
    assert ("--fp16" in args) == (not facts["qdq"])  # FP32 model: FP16 kernels allowed
    assert "--int8" not in args
    assert ("--sparsity=enable" in args) == (facts["sparse_layers"] > 0)
    chw = "x".join(str(d) for d in facts["dims"][1:])
    dynamic = not isinstance(facts["dims"][0], int) or facts["dims"][0] == 0
    assert dynamic == (name == "dynamic")
    if dynamic:
        assert f"--minShapes={facts['input']}:1x{chw}" in args and f"--optShapes={facts['input']}:4x{chw}" in args
        assert f"--maxShapes={facts['input']}:8x{chw}" in args
    else:
        assert not any(a.startswith("--minShapes") for a in args)
    bench = script_args(tmp_path / "b" / "bench.sh")
    assert bench.count("--loadEngine=model.engine") == (2 if dynamic else 1)
    assert (tmp_path / "b" / "model.onnx").read_bytes() == path.read_bytes()
    record = json.loads((tmp_path / "b" / "deploy.json").read_text())
    assert record["build_engine"][1:] == args


def test_sparse_and_quantized_variants_are_what_they_claim(variants):
    assert graph_facts(variants["sparse_int8"])["sparse_layers"] > 0 and graph_facts(variants["sparse_int8"])["qdq"]
    assert graph_facts(variants["int8"])["sparse_layers"] == 0


def test_older_jetpack_gets_int8_fp16(variants, tmp_path):
    write_bundle(variants["int8"], tmp_path / "b", BuildOptions(trt="8"))
    args = script_args(tmp_path / "b" / "build_engine.sh")
    assert "--int8" in args and "--fp16" in args and "--stronglyTyped" not in args


def test_bundle_refuses_bad_options_and_keeps_existing_folders(variants, tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OrinflowError, match="not empty"):
        write_bundle(variants["fp32"], target, BuildOptions())
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(OrinflowError, match="fixed batch"):
        write_bundle(variants["fp32"], tmp_path / "c", BuildOptions(opt_batch=4, max_batch=4))
    with pytest.raises(OrinflowError, match="--trt"):
        write_bundle(variants["fp32"], tmp_path / "c", BuildOptions(trt="7"))
    assert not (tmp_path / "c").exists()


def test_overwrite_replaces_only_a_bundle_orinflow_made(variants, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    write_bundle(variants["fp32"], bundle, BuildOptions())
    (bundle / "model.engine").write_bytes(b"built on the device")  # what build_engine.sh leaves
    write_bundle(variants["int8"], bundle, BuildOptions(), overwrite=True)
    assert not (bundle / "model.engine").exists() and graph_facts(bundle / "model.onnx")["qdq"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging and the old bundle are gone
    (bundle / "src").mkdir()
    (bundle / "src" / "important.py").write_text("mine")
    with pytest.raises(OrinflowError, match="did not write"):
        write_bundle(variants["fp32"], bundle, BuildOptions(), overwrite=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("mine")
    with pytest.raises(OrinflowError, match="no deploy.json"):
        write_bundle(variants["fp32"], project, BuildOptions(), overwrite=True)
    monkeypatch.chdir(project)
    for folder in (".", "..", str(Path.home())):
        with pytest.raises(OrinflowError, match="never replaces it"):
            write_bundle(variants["fp32"], Path(folder), BuildOptions(), overwrite=True)
    assert (bundle / "src" / "important.py").read_text() == "mine" and (project / "main.py").read_text() == "mine"


def test_overwrite_checks_every_file_at_every_depth(variants, tmp_path):
    """A user's file inside a folder the bundle made, or a folder where the bundle's device products go, is
    never deleted: only what the record lists, file by file, and the products' own files may be replaced."""
    bundle = tmp_path / "ow"
    record = write_bundle(variants["fp32"], bundle, BuildOptions())
    assert "orinflow/deploy/infer.py" in record["tree"] and "deploy.json" in record["tree"]
    (bundle / "orinflow" / "deploy" / "__pycache__").mkdir()
    (bundle / "orinflow" / "deploy" / "__pycache__" / "infer.cpython-310.pyc").write_bytes(b"device")
    write_bundle(variants["fp32"], bundle, BuildOptions(), overwrite=True)  # Python's own products are replaced
    for mine in (bundle / "orinflow" / "mywork" / "notes.txt", bundle / "timing.cache" / "important.py",
                 bundle / "orinflow" / "deploy" / "__pycache__" / "notes.txt"):
        made = not mine.parent.exists()
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text("mine")
        with pytest.raises(OrinflowError, match="did not write"):
            write_bundle(variants["int8"], bundle, BuildOptions(), overwrite=True)
        assert mine.read_text() == "mine"
        mine.unlink()
        if made:
            mine.parent.rmdir()
    # a bundle of an older orinflow (its record lists top-level names only): its package folder may hold only the
    # package's modules
    old = json.loads((bundle / "deploy.json").read_text())
    (bundle / "deploy.json").write_text(json.dumps({k: v for k, v in old.items() if k != "tree"}))
    (bundle / "orinflow" / "mywork").mkdir()
    (bundle / "orinflow" / "mywork" / "notes.txt").write_text("mine")
    with pytest.raises(OrinflowError, match="did not write .*mywork/notes.txt"):
        write_bundle(variants["int8"], bundle, BuildOptions(), overwrite=True)
    (bundle / "orinflow" / "mywork" / "notes.txt").unlink()
    (bundle / "orinflow" / "mywork").rmdir()
    write_bundle(variants["int8"], bundle, BuildOptions(), overwrite=True)


def _renamed_input(source: Path, name: str, target: Path) -> Path:
    model = onnx.load(str(source))
    old = model.graph.input[0].name
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
    onnx.save(model, str(target))
    return target


def test_printed_commands_are_shell_quoted_and_unsafe_input_names_refused(variants, tmp_path):
    import shlex

    record = write_bundle(variants["dynamic"], tmp_path / "b", BuildOptions(opt_batch=4, max_batch=4))
    readme = (tmp_path / "b" / "README.md").read_text()
    assert shlex.join(record["build_engine"]) in readme
    assert all(f"`{shlex.join(c)}`" in readme for c in record["bench"].values())
    for name in ("images;touch PWNED;x", "images:0,other", "it's"):
        hostile = _renamed_input(variants["dynamic"], name, tmp_path / "hostile.onnx")
        with pytest.raises(OrinflowError, match="cannot be written into trtexec's shape flags"):
            write_bundle(hostile, tmp_path / "h", BuildOptions(opt_batch=4, max_batch=4))
    assert not (tmp_path / "h").exists()
    spaced = _renamed_input(variants["dynamic"], "images$(id)", tmp_path / "spaced.onnx")
    record = write_bundle(spaced, tmp_path / "s", BuildOptions(opt_batch=4, max_batch=4))
    printed = shlex.join(record["build_engine"])
    assert "'--minShapes=images$(id):1x3x256x256'" in printed and shlex.split(printed) == record["build_engine"]


def test_external_data_is_embedded_in_the_bundle_and_counted_in_the_size(demo_onnx, tmp_path):
    from orinflow.evaluate import size_bytes

    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.load(str(demo_onnx))
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    stub, data = (folder / "m.onnx").stat().st_size, (folder / "m.data").stat().st_size
    assert data > 10 * stub
    assert size_bytes(load_model(folder / "m.onnx")) == stub + data
    write_bundle(folder / "m.onnx", tmp_path / "b", BuildOptions())
    assert sorted(p.name for p in (tmp_path / "b").glob("*.onnx")) == ["model.onnx"]
    bundled = onnx.load(str(tmp_path / "b" / "model.onnx"), load_external_data=False)
    assert not any(t.external_data for t in bundled.graph.initializer)
    assert OrtRunner(tmp_path / "b" / "model.onnx").input_name


def run_infer(bundle, *args) -> subprocess.CompletedProcess:
    """The bundle's infer.py in a fresh interpreter, from another folder: it must use the bundled package."""
    return subprocess.run([sys.executable, str(bundle / "infer.py"), "--backend", "onnxruntime", *map(str, args)],
                          capture_output=True, text=True, cwd="/", check=False)


def assert_infer_matches_evaluate(onnx_path, data_yaml, bundle, tmp_path):
    write_bundle(onnx_path, bundle, BuildOptions())
    images = load_dataset(data_yaml, "val").images
    out = tmp_path / "dets.json"
    result = run_infer(bundle, "--conf", "0.001", "--json", out, *images)
    assert result.returncode == 0, result.stderr
    model = load_model(onnx_path)
    expected = {i: d for i, _, d in predictions(OrtRunner(onnx_path), model.processing, images, conf=0.001)}
    got = json.loads(out.read_text())
    assert [g["image"] for g in got] == [str(p) for p in images]
    for index, item in enumerate(got):
        boxes = np.array([d["box_xyxy"] for d in item["detections"]]).reshape(-1, 4)
        assert np.array_equal([d["class"] for d in item["detections"]], expected[index].classes)
        assert np.allclose(boxes, expected[index].boxes, atol=1e-4)
        assert np.allclose([d["score"] for d in item["detections"]], expected[index].scores, atol=1e-6)
    result = run_infer(bundle, "--eval", data_yaml)
    assert result.returncode == 0, result.stderr
    on_device = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]
    desktop = evaluate_model(model, data_yaml, "val", EvalOptions(measure_latency=False))["metrics"]
    assert on_device["mAP50-95"] == pytest.approx(desktop["mAP50-95"], abs=1e-9)


def test_bundle_infer_gives_evaluates_detections(demo_onnx, tiny_shapes, tmp_path):
    assert_infer_matches_evaluate(demo_onnx, tiny_shapes, tmp_path / "bundle", tmp_path)


def test_bundle_infer_reports_bad_input(demo_onnx, tmp_path):
    write_bundle(demo_onnx, tmp_path / "b", BuildOptions())
    result = run_infer(tmp_path / "b", tmp_path / "missing.jpg")
    assert result.returncode == 2 and "no such image" in result.stderr


def test_deploy_cli_and_tensorrt_runtime_message(demo_onnx, tiny_shapes, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "-m", str(demo_onnx), "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert re.search(r"--fp16", result.output) and (tmp_path / "b" / "README.md").exists()
    assert "IoU 0.7," in result.output and "None" not in result.output  # the family's IoU the graph uses
    result = runner.invoke(app, ["deploy", "-m", str(DEMO_MODEL)])
    assert result.exit_code == 2 and "not ONNX" in result.output
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt imports here: the missing-package message cannot be checked")
    except ImportError:
        pass
    result = runner.invoke(app, ["evaluate", "-m", str(demo_onnx), "--yaml", str(tiny_shapes), "--runtime",
                                 "tensorrt"])
    assert result.exit_code == 2 and "tensorrt" in result.output and "does not import" in result.output


def test_foreign_onnx_gets_scripts_and_a_warning(tmp_path):
    from onnx import helper, numpy_helper

    weight = np.ones((8, 16, 3, 3), np.float32)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 16, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g", [x], [y],
                              [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = CliRunner().invoke(app, ["deploy", "-m", str(path), "-o", str(tmp_path / "b"), "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert "no orinflow metadata" in result.output
    args = script_args(tmp_path / "b" / "build_engine.sh")
    assert "--optShapes=x:4x16x8x8" in args and "--maxShapes=x:4x16x8x8" in args and "--fp16" in args
