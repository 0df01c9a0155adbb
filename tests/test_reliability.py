"""The guarantees of docs/reliability.md, each against the defect that broke it."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app

runner = CliRunner()
ORINFLOW = Path(sys.executable).parent / "orinflow"


def sha(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def bare_onnx(tmp_path, demo_onnx) -> Path:
    """The demo export without value_info: what ModelOpt's shape inference rewrites when it gets the path."""
    model = onnx.load(str(demo_onnx))
    del model.graph.value_info[:]
    folder = tmp_path / "user"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def test_quantize_never_writes_to_the_input_model(bare_onnx, calib, tmp_path, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    np.save(bare_onnx.parent / "calib.npy", calib[:4])
    before = {p.name: sha(p) for p in bare_onnx.parent.iterdir()}
    result = invoke("quantize", "-m", bare_onnx, "--calib", bare_onnx.parent / "calib.npy", "--method", "max",
                    "-o", tmp_path / "out" / "q.onnx")
    assert result.exit_code == 0, result.output
    assert {p.name: sha(p) for p in bare_onnx.parent.iterdir()} == before  # same files, same bytes
    assert list(private_tmp.iterdir()) == []  # the private copies are gone


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_outputs_get_the_permissions_of_the_umask(umask, demo_onnx, tiny_shapes, tmp_path):
    previous = os.umask(umask)
    try:
        result = invoke("calibrate", "-m", demo_onnx, "--yaml", tiny_shapes, "--num-images", 2,
                        "-o", tmp_path / "c.npy")
        assert result.exit_code == 0, result.output
        result = invoke("deploy", "-m", demo_onnx, "-o", tmp_path / "bundle")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)
    for name in ("c.npy", "c.npy.json", "bundle/model.onnx", "bundle/deploy.json", "bundle/README.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    for name in ("bundle", "bundle/build_engine.sh"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o777 & ~umask, name


def test_records_never_overwrite_another_commands_record(tmp_path, tiny_shapes):
    model = tmp_path / "name.onnx"
    assert invoke("export", "-m", DEMO_MODEL, "--imgsz", 256, "-o", model).exit_code == 0
    export_record = (tmp_path / "name.json").read_text()
    result = invoke("calibrate", "-m", model, "--yaml", tiny_shapes, "--num-images", 2, "-o", tmp_path / "name.npy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "name.json").read_text() == export_record
    assert json.loads((tmp_path / "name.npy.json").read_text())["command"] == "calibrate"


def test_skip_bad_images_names_counts_and_records_them(tiny_shapes, demo_onnx, demo_int8, tmp_path):
    import yaml

    data = tmp_path / "data"
    shutil.copytree(tiny_shapes.parent, data)
    config = yaml.safe_load((data / tiny_shapes.name).read_text())
    config["path"] = str(data)
    (data / tiny_shapes.name).write_text(yaml.safe_dump(config))
    broken = sorted((data / "images" / "val").iterdir())[0]
    broken.write_bytes(b"\x00" * 64)
    args = ["evaluate", "-m", demo_onnx, "--yaml", data / tiny_shapes.name, "--runs", 0]
    assert invoke(*args).exit_code == 2
    result = invoke(*args, "--skip-bad-images", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["skipped_images"] == [str(broken)]
    assert record["images"] == len(list((data / "images" / "val").iterdir())) - 1
    assert broken.name in result.output and "1 unreadable image" in result.output
    # an INT8 model whose integer kernels are checked first: the check's images skip the broken one too
    int8 = demo_int8("max", "cpu")["model"]
    result = invoke("evaluate", "-m", int8, "--yaml", data / tiny_shapes.name, "--runs", 0, "--skip-bad-images")
    assert result.exit_code == 0 and "1 unreadable image" in result.output, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def _renamed_classes(tiny_shapes: Path, folder: Path, names: list[str]) -> Path:
    """The shapes data under other class names (labels untouched)."""
    import yaml

    shutil.copytree(tiny_shapes.parent, folder)
    config = yaml.safe_load((folder / tiny_shapes.name).read_text())
    config.update(path=str(folder), names=dict(enumerate(names)))
    (folder / tiny_shapes.name).write_text(yaml.safe_dump(config))
    return folder / tiny_shapes.name


def test_a_detector_is_scored_only_on_its_own_classes_or_through_class_map(tiny_shapes, demo_onnx, tmp_path):
    import orinflow
    from orinflow.errors import OrinflowError

    quiet = dict(runs=0, say=lambda m: None)
    own = orinflow.evaluate(demo_onnx, tiny_shapes, **quiet)["metrics"]["mAP50-95"]
    more = _renamed_classes(tiny_shapes, tmp_path / "more", ["circle", "square", "triangle", "star"])
    other = _renamed_classes(tiny_shapes, tmp_path / "other", ["dog", "square", "triangle"])
    with pytest.raises(OrinflowError, match="the model has 3 classes .* has 4 .*--class-map"):
        orinflow.evaluate(demo_onnx, more, **quiet)
    with pytest.raises(OrinflowError, match="class 0 is 'circle' in the model but 'dog'"):
        orinflow.evaluate(demo_onnx, other, **quiet)
    for class_map in ("names", "0:0,1:1,2:2"):
        assert orinflow.evaluate(demo_onnx, more, class_map=class_map, **quiet)["metrics"]["mAP50-95"] == own
    swapped = orinflow.evaluate(demo_onnx, tiny_shapes, class_map="0:1,1:0,2:2", **quiet)["metrics"]["mAP50-95"]
    assert swapped < own - 0.2
    for bad, message in (("0:7", "the data has no class 7"), ("0:1,0:2", "paired twice"), ("a:b", "not model:data")):
        with pytest.raises(OrinflowError, match=message):
            orinflow.evaluate(demo_onnx, tiny_shapes, class_map=bad, **quiet)
    # a data class no model class pairs with is left out of the mAP and named, not scored as AP 0
    full = orinflow.evaluate(demo_onnx, tiny_shapes, **quiet)["metrics"]["per_class"]
    partial = orinflow.evaluate(demo_onnx, tiny_shapes, class_map="0:0,1:1", **quiet)
    names = list(full)
    assert partial["metrics"]["unpaired"] == {names[2]: full[names[2]]["instances"]}
    expected = (full[names[0]]["mAP50-95"] + full[names[1]]["mAP50-95"]) / 2
    assert partial["metrics"]["mAP50-95"] == pytest.approx(expected, abs=1e-9)
    assert any("left out of the mAP" in note and names[2] in note for note in partial["notes"])


def test_device_cuda_without_a_gpu_is_refused_before_any_file(tmp_path, tiny_shapes):
    result = invoke("qat", "-m", DEMO_MODEL, "--yaml", tiny_shapes, "--device", "cuda", "-o", tmp_path / "q.onnx")
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_messages_name_the_cause(tmp_path):
    from tests_helpers import resnet20_state

    torch.save(resnet20_state(), tmp_path / "w.pt")
    result = invoke("export", "-m", tmp_path / "w.pt", "--arch", "resnet18")
    line = result.stderr.strip()
    assert "\n" not in line and "Missing key(s)" in line and "Unexpected key(s)" in line
    (tmp_path / "broken.pt").write_bytes(DEMO_MODEL.read_bytes()[:100_000])
    assert "truncated or damaged" in invoke("export", "-m", tmp_path / "broken.pt").stderr


# ------------------------------------------------------------------ interrupts
def _interrupt(command: list[str], when, folder: Path, tmp: Path, timeout: float = 180):
    """Run `orinflow <command>` in its own process group; send SIGINT (as Ctrl-C does) once `when()` is true."""
    env = {**os.environ, "TMPDIR": str(tmp), "YOLO_OFFLINE": "1"}
    started = time.monotonic()
    process = subprocess.Popen([str(ORINFLOW), *map(str, command)], cwd=folder, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not when(time.monotonic() - started):
        time.sleep(0.01)
        assert time.monotonic() - started < timeout, "the moment to interrupt never came"
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _after(seconds: float):
    return lambda elapsed: elapsed >= seconds


def _exists(folder: Path, pattern: str, delay: float = 0.0):
    seen: list[float] = []

    def ready(elapsed: float) -> bool:
        if not seen and any(folder.rglob(pattern)):
            seen.append(elapsed)
        return bool(seen) and elapsed >= seen[0] + delay
    return ready


def _assert_clean_interrupt(rc, err, out_folder: Path, inputs: dict[Path, str], tmp: Path):
    assert rc == 130, f"exit {rc}: {err[-2000:]}"
    assert [ln for ln in err.splitlines() if ln.strip()] == ["interrupted"], err[-2000:]
    assert not list(out_folder.rglob("*.part")), "a partial file was left"
    for path, digest in inputs.items():
        assert sha(path) == digest, f"{path} changed"
    assert not [p for p in tmp.iterdir() if p.name.startswith("orinflow-")], "a private folder was left"


QUANTIZE_MOMENTS = {
    "while importing": lambda out, tmp: _after(0.4),
    "as the output is opened": lambda out, tmp: _exists(out, "*.part"),
    "inside ModelOpt": lambda out, tmp: _exists(tmp, "orinflow-*", delay=0.5),
}


@pytest.mark.parametrize("moment", list(QUANTIZE_MOMENTS))
def test_interrupted_quantize_leaves_nothing(moment, bare_onnx, calib, tmp_path):
    np.save(bare_onnx.parent / "calib.npy", np.tile(calib, (8, 1, 1, 1)))  # 64 images: ModelOpt works for seconds
    inputs = {p: sha(p) for p in bare_onnx.parent.iterdir()}
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    rc, _, err = _interrupt(["quantize", "-m", bare_onnx, "--calib", bare_onnx.parent / "calib.npy",
                             "--method", "max", "-o", out / "q.onnx"], QUANTIZE_MOMENTS[moment](out, tmp), tmp_path, tmp)
    _assert_clean_interrupt(rc, err, out, inputs, tmp)
    assert list(out.iterdir()) == []


TRAIN_MOMENTS = {
    "while loading": lambda out: _after(1.5),
    "as the reference is written": lambda out: _exists(out, "*.part"),
    "while training": lambda out: _exists(out, "*_start_int8.onnx", delay=1.0),  # route 1's start, then training
}


@pytest.mark.parametrize("moment", list(TRAIN_MOMENTS))
def test_interrupted_qat_leaves_nothing_partial(moment, tiny_shapes, tmp_path):
    model = tmp_path / "user" / "demo.pt"
    model.parent.mkdir()
    shutil.copy(DEMO_MODEL, model)
    inputs = {model: sha(model)}
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    rc, _, err = _interrupt(["qat", "-m", model, "--yaml", tiny_shapes, "--epochs", 5, "--batch", 2,
                             "--calib-images", 4, "--runs", 0, "-o", out / "q.onnx"], TRAIN_MOMENTS[moment](out),
                            tmp_path, tmp)
    _assert_clean_interrupt(rc, err, out, inputs, tmp)
    assert not (out / "q.onnx").exists()
    for onnx_file in out.glob("*.onnx"):  # a start model written before the interrupt is whole
        onnx.checker.check_model(str(onnx_file))


def test_quantization_is_reproducible(fp32, calib, tmp_path):
    """The same model and calibration set give the same scales and weights, byte for byte."""
    from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx

    spec = QuantizeSpec(method="max", target="tensorrt")
    models = [onnx.load(str(quantize_onnx(fp32, calib[:4], spec, tmp_path / f"{i}.onnx")["model"]))
              for i in range(2)]
    tensors = [{t.name: t.SerializeToString() for t in m.graph.initializer} for m in models]
    assert tensors[0] == tensors[1] and len(tensors[0]) > 0


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path):
    import errno

    from orinflow.errors import OrinflowError
    from orinflow.io import atomic_path

    target = tmp_path / "model.onnx"
    with pytest.raises(OrinflowError, match=f"writing {target} failed: No space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_on_a_full_disk_is_one_line_naming_it_and_leaves_nothing(demo_onnx, tmp_path, monkeypatch):
    import errno

    import orinflow
    from orinflow.deploy import bundle
    from orinflow.errors import OrinflowError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle, "copy_package", full)
    with pytest.raises(OrinflowError, match=f"writing {tmp_path / 'b'} failed: No space left on device"):
        orinflow.deploy(demo_onnx, output=tmp_path / "b", say=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_small_refusals_name_the_right_thing(demo_onnx, demo_int8, tmp_path, monkeypatch):
    """DLA's expected GPU ops include an in-graph NonMaxSuppression (its outputs are integers, no activation); a
    Q/DQ model with --dla is refused before the graph is prepared; the API's `say` is no CLI flag; OrinflowError
    is importable from the package."""
    import orinflow
    from orinflow.api import inspection

    record = orinflow.deploy(demo_onnx, output=tmp_path / "d", dla=0, nms="onnx", say=lambda m: None)
    assert "NonMaxSuppression" in record["dla"]["expected_gpu_ops"]
    import importlib

    prepare = importlib.import_module("orinflow.deploy.prepare")
    monkeypatch.setattr(prepare, "prepare_graph", lambda *a, **k: pytest.fail("prepared first"))
    with pytest.raises(orinflow.OrinflowError, match="DLA builds take implicit INT8"):
        inspection.deploy(demo_int8("max", "tensorrt")["model"], output=tmp_path / "q", dla=0, say=lambda m: None)
    with pytest.raises(orinflow.OrinflowError, match=r"orinflow.calib_cache\(\): say must be a function"):
        orinflow.calib_cache(demo_onnx, say=None)
    assert orinflow.OrinflowError is __import__("orinflow.errors").errors.OrinflowError


def test_a_cache_that_cannot_be_read_or_written_costs_a_note_not_the_result(tmp_path):
    from orinflow.io import read_cached, write_cached

    notes = []
    damaged = tmp_path / "entry.json"
    damaged.write_text('{"groups": [1, 2')
    assert read_cached(damaged, notes.append) is None and str(damaged) in notes[-1]
    blocked = tmp_path / "a_file"  # a cache folder that cannot be made (read-only to root as well)
    blocked.write_text("")
    write_cached(blocked / "cache" / "entry.json", {"done": True}, notes.append)
    assert "not cached" in notes[-1] and "the result stands" in notes[-1]
