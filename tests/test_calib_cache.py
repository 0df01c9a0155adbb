"""TensorRT calibration caches (implicit INT8), and the bundles that build from them: DLA and DeepStream."""
import configparser
import json
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import orinflow
from conftest import DEMO_MODEL
from orinflow.cli import app
from orinflow.optimize.common.graph import decode_nodes
from orinflow.optimize.quantize.calib_cache import (LEVELS, activation_tensors, entropy_amax, entropy_divergences,
                                                    read_cache)

runner = CliRunner()
QUIET = {"say": lambda m: None}


def test_entropy_calibration_worked_by_hand():
    """Histogram [9, 6, 2, 1, 1] of |x| (bin width 1) merged into 2 levels; the first bin is discarded (total 10).
    P folds the outliers past B into bin B; Q is merged from the truncated histogram without them, over the fine
    bins where P is not empty, each normalised on its own.
    B=2: P = [0, 6, 4]; fine centres 0.5, 1.5, 2.5 over 2 coarse bins of 1.25 go to 0, 1, 1 (the last fine bin
         always to the last coarse bin): Q from [0, 6, 2] = [0, 4, 4]; KL = .6 ln(.6/.5) + .4 ln(.4/.5) = 0.020136.
    B=3: P = [0, 6, 2, 2]; coarse width 1.75: bins 0, 1 -> 0, bins 2, 3 -> 1: Q from [0, 6, 2, 1] = [0, 6, 1.5, 1.5]
         (total 9); KL = .6 ln(.6/(6/9)) + 2 (.2 ln(.2/(1.5/9))) = 0.009712.
    B=4: P = [0, 6, 2, 1, 1]; coarse width 2.25: bins 0, 1 -> 0, bins 2, 3, 4 -> 1: Q = [0, 6, 4/3, 4/3, 4/3];
         KL = .2 ln(.2/.1333) + 2 (.1 ln(.1/.1333)) = 0.023557.
    The least divergence is at B=3: the range is the middle of that bin, 3.5."""
    hist = np.array([9, 6, 2, 1, 1], np.float64)
    divergences = entropy_divergences(hist, levels=2)
    assert divergences == pytest.approx({2: 0.020136, 3: 0.009712, 4: 0.023557}, abs=1e-6)
    assert entropy_amax(hist, amax=5.0, levels=2) == 3.5


def divergences_by_the_description(hist, levels):
    """NVIDIA's reference steps one candidate at a time: P is the histogram truncated at B with the outliers past B
    added to bin B; Q merges the truncated histogram without them into `levels` bins and spreads each merged count
    over the bins where P is not empty; each is normalised on its own, and KL runs over P's non-empty bins."""
    counts = np.asarray(hist, np.float64).copy()
    counts[0] = 0
    found = {}
    for last in range(levels, len(counts)):
        reference = np.append(counts[:last], counts[last:].sum())
        candidate = counts[:last + 1]
        coarse = [min(int((i + 0.5) * levels / (last + 0.5)), levels - 1) for i in range(last + 1)]
        spread = np.zeros_like(reference)
        for j in set(coarse):
            members = [i for i, c in enumerate(coarse) if c == j and reference[i] > 0]
            for i in members:
                spread[i] = candidate[[k for k, c in enumerate(coarse) if c == j]].sum() / len(members)
        p, q = reference / reference.sum(), spread / spread.sum()
        found[last] = float(sum(pi * np.log(pi / qi) if qi > 0 else np.inf for pi, qi in zip(p, q) if pi > 0))
    return found


def test_entropy_divergences_follow_the_description_step_by_step():
    rng = np.random.default_rng(1)
    hist = np.histogram(np.abs(rng.standard_cauchy(5000)), bins=300, range=(0, 40))[0]
    assert entropy_divergences(hist, levels=20) == pytest.approx(divergences_by_the_description(hist, 20), abs=1e-9)
    sparse = np.zeros(300)
    sparse[::7] = rng.integers(1, 50, len(sparse[::7]))  # empty bins between the values, as for 8-bit pixels
    assert entropy_divergences(sparse, levels=20) == pytest.approx(divergences_by_the_description(sparse, 20),
                                                                   abs=1e-9)


def test_entropy_keeps_the_whole_range_of_pixels_and_of_a_sigmoid():
    """256 pixel values in 2048 bins leave most bins empty; folding the outliers into the candidate too had made
    every small range look free there, and the input's range came out 0.062 (97% of the pixels clipped)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, 100_000) / 255.0
    hist, edges = np.histogram(pixels, bins=2048, range=(0, 1))
    assert entropy_amax(hist, edges[-1]) > 0.99
    sigmoid = 1 / (1 + np.exp(-3 * rng.standard_normal(100_000)))
    hist, edges = np.histogram(sigmoid, bins=2048, range=(0, sigmoid.max()))
    assert entropy_amax(hist, edges[-1]) > 0.99 * sigmoid.max()


def test_entropy_clips_a_long_tail_and_keeps_a_bounded_range():
    rng = np.random.default_rng(0)
    tail = np.abs(rng.laplace(size=200_000))
    hist, edges = np.histogram(tail, bins=2048, range=(0, tail.max()))
    assert np.percentile(tail, 99) < entropy_amax(hist, edges[-1]) < 0.8 * tail.max()  # the few outliers clipped
    flat = np.abs(rng.uniform(-1, 1, size=200_000))
    hist, edges = np.histogram(flat, bins=2048, range=(0, flat.max()))
    assert entropy_amax(hist, edges[-1]) > 0.9 * flat.max()  # nothing to clip


@pytest.fixture(scope="module")
def entropy_cache(demo_onnx, calib, tmp_path_factory):
    """`orinflow calib-cache` on the embedded detector's FP32 ONNX with its eight calibration images."""
    folder = tmp_path_factory.mktemp("cache")
    np.save(folder / "calib.npy", calib)
    out = folder / "shapes.cache"
    result = runner.invoke(app, ["calib-cache", "-m", str(demo_onnx), "--calib", str(folder / "calib.npy"),
                                 "--method", "entropy", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def float_activations(model: onnx.ModelProto) -> set[str]:
    """Independently of the code under test: the input and every node output ONNX Runtime gives as a float."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for n in model.graph.node for t in n.output if t)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    floats = {o.name for o in session.get_outputs() if o.type == "tensor(float)"}
    return floats | {i.name for i in model.graph.input}


def test_cache_covers_every_activation_and_parses_back_exactly(entropy_cache, demo_onnx, calib):
    """Every activation but the decode's, which head protection leaves without a scale (TensorRT keeps it in FP16,
    as the explicit Q/DQ models keep it in float)."""
    header, scales = read_cache(entropy_cache)
    model = onnx.load(str(demo_onnx))
    assert header == "TRT-8600-EntropyCalibration2"
    constants = {t for n in model.graph.node if n.op_type == "Constant" for t in n.output}
    decode = {t for n in model.graph.node if n.name in set(decode_nodes(model)) for t in n.output}
    assert decode and not decode & set(scales)
    assert set(scales) | decode == float_activations(model) - constants == set(activation_tensors(model))
    record = json.loads(entropy_cache.with_name(entropy_cache.name + ".json").read_text())
    assert record["coverage"] == 1.0 and record["method"] == "entropy" and record["tensors"] == len(scales)
    assert record["head_protected"] == len(decode)
    for line in entropy_cache.read_text().splitlines()[1:]:  # each scale is the hex of a big-endian float32
        name, digits = line.split(": ")
        assert struct.unpack(">f", bytes.fromhex(digits))[0] == scales[name]
    input_amax = float(np.abs(calib).max())  # the network input: entropy clips at most to the image range
    assert 0 < scales[model.graph.input[0].name] * LEVELS <= input_amax * (1 + 1 / 2048)


def test_methods_order_their_ranges(demo_onnx, calib, tmp_path, entropy_cache):
    """max bounds percentile and entropy on every tensor; without head protection the decode gets scales too."""
    np.save(tmp_path / "calib.npy", calib)
    made = {m: read_cache(orinflow.calib_cache(demo_onnx, calib=tmp_path / "calib.npy", method=m, head_protect=False,
                                               output=tmp_path / f"{m}.cache", **QUIET)["output"])[1]
            for m in ("max", "percentile")}
    assert set(made["max"]) == set(activation_tensors(onnx.load(str(demo_onnx))))
    _, entropy = read_cache(entropy_cache)
    names = list(entropy)
    assert all(made["percentile"][t] <= made["max"][t] * (1 + 1e-6) for t in names)
    assert all(entropy[t] <= made["max"][t] * (1 + 1e-3) for t in names)
    assert sum(entropy[t] < made["max"][t] * 0.999 for t in names) > len(names) // 4  # entropy clips


def test_from_qdq_writes_the_scales_the_model_carries(demo_int8, demo_onnx, tmp_path):
    quantized = onnx.load(demo_int8("max", "tensorrt")["model"])
    weights = {t.name: t for t in quantized.graph.initializer}
    expected = {n.input[0]: numpy_helper.to_array(weights[n.input[1]]).reshape(()) for n in quantized.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in weights}
    record = orinflow.calib_cache(demo_onnx, from_qdq=demo_int8("max", "tensorrt")["model"],
                                  output=tmp_path / "qdq.cache", **QUIET)
    _, scales = read_cache(tmp_path / "qdq.cache")
    assert scales == {name: float(value) for name, value in expected.items()}  # float32 round trip, exact
    assert set(scales) <= set(activation_tensors(onnx.load(str(demo_onnx))))
    assert record["method"] == "from-qdq" and 0 < record["coverage"] < 1 and record["missing"]


@pytest.mark.parametrize("case", ["qdq without --from-qdq", "wrong shape", "not onnx", "fp32 as --from-qdq"])
def test_bad_input_is_one_line_and_writes_nothing(case, demo_int8, demo_onnx, tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 64, 64), np.float32))
    qdq = demo_int8("max", "tensorrt")["model"]
    args = {"qdq without --from-qdq": ["-m", qdq, "--calib", tmp_path / "small.npy"],
            "wrong shape": ["-m", demo_onnx, "--calib", tmp_path / "small.npy"],
            "not onnx": ["-m", DEMO_MODEL, "--calib", tmp_path / "small.npy"],
            "fp32 as --from-qdq": ["--from-qdq", demo_onnx]}[case]
    out = tmp_path / "out" / "x.cache"
    result = runner.invoke(app, ["calib-cache", *map(str, args), "-o", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not out.parent.exists()
    message = {"qdq without --from-qdq": "--from-qdq", "wrong shape": "has shape", "not onnx": "not ONNX",
               "fp32 as --from-qdq": "no Q/DQ nodes"}[case]
    assert message in result.stderr


def test_inspect_reads_a_cache_and_names_what_it_misses(demo_int8, demo_onnx, entropy_cache, tmp_path):
    alone = orinflow.inspect(entropy_cache, **QUIET)["calib_cache"]
    assert alone["tensors"] > 10 and alone["scale_range"][0] <= alone["scale_range"][1]
    orinflow.calib_cache(from_qdq=demo_int8("max", "tensorrt")["model"], output=tmp_path / "q.cache", **QUIET)
    checked = orinflow.inspect(demo_onnx, calib_cache=tmp_path / "q.cache", **QUIET)["calib_cache"]
    assert checked["missing"] and not checked["unknown"]
    assert checked["activations"] == len(activation_tensors(onnx.load(str(demo_onnx)))) > alone["tensors"]
    result = runner.invoke(app, ["inspect", "-m", str(entropy_cache)])
    assert result.exit_code == 0 and "calibration cache" in result.output


def test_implicit_bundle_for_dla_and_deepstream(demo_onnx, entropy_cache, tmp_path):
    result = runner.invoke(app, ["deploy", "-m", str(demo_onnx), "--implicit", "--calib-cache", str(entropy_cache),
                                 "--dla", "0", "--deepstream", "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "b"
    assert (bundle / "calib.cache").read_bytes() == entropy_cache.read_bytes()
    build = (bundle / "build_engine.sh").read_text()
    for flag in ("--int8", "--fp16", "--calib=calib.cache", "--useDLACore=0", "--allowGPUFallback"):
        assert flag in build
    assert "--stronglyTyped" not in build
    readme = (bundle / "README.md").read_text()
    assert "## Implicit INT8" in readme and "deprecated in TensorRT 10" in readme and "## DLA core 0" in readme
    record = json.loads((bundle / "deploy.json").read_text())
    assert "EfficientNMS_TRT" in record["dla"]["expected_gpu_ops"]  # the NMS plugin runs on the GPU
    config = configparser.ConfigParser()
    config.read(bundle / "config_infer_primary.txt")
    prop = config["property"]
    assert prop["int8-calib-file"] == "calib.cache" and prop["network-mode"] == "1"
    assert prop["parse-bbox-func-name"] == "NvDsInferParseCustomEfficientNMSTLT" and prop["cluster-mode"] == "4"
    assert prop["output-blob-names"] == "num_dets;det_boxes;det_scores;det_classes"
    assert (bundle / "labels.txt").read_text().split() == ["circle", "square", "triangle"]


def _config(model, tmp_path, name) -> configparser.SectionProxy:
    orinflow.deploy(model, output=tmp_path / name, deepstream=True, **QUIET)
    config = configparser.ConfigParser()
    config.read(tmp_path / name / "config_infer_primary.txt")
    return config["property"]


def test_deepstream_preprocessing_follows_the_model(demo_onnx, tmp_path):
    """The embedded detector (letterbox, RGB, 0..1) and the same graph adopted as a resize, BGR, 0..255 model."""
    letterbox = _config(demo_onnx, tmp_path, "rgb")
    assert float(letterbox["net-scale-factor"]) == pytest.approx(1 / 255) and letterbox["offsets"] == "0;0;0"
    assert letterbox["model-color-format"] == "0" and letterbox["maintain-aspect-ratio"] == "1"
    assert letterbox["symmetric-padding"] == "1" and letterbox["infer-dims"] == "3;256;256"
    assert letterbox["num-detected-classes"] == "3" and letterbox["network-mode"] == "2"
    bare = onnx.load(str(demo_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    adopted = orinflow.adopt(tmp_path / "bare.onnx", letterbox=False, bgr=True, mean="0,0,0", std="1/255",
                             names="a,b,c", output=tmp_path / "bgr.onnx")["model"]
    resize = _config(adopted, tmp_path, "bgr")
    assert float(resize["net-scale-factor"]) == pytest.approx(1.0) and resize["offsets"] == "0;0;0"
    assert resize["model-color-format"] == "1" and resize["maintain-aspect-ratio"] == "0"


@pytest.mark.parametrize("args, message", [
    (["--implicit"], "--implicit builds INT8 from a calibration cache"),
    (["--calib-cache", "{cache}"], "add --implicit"),
    (["--dla", "2"], "--dla 2"),
])
def test_deploy_refuses_what_an_implicit_build_cannot_take(args, message, demo_onnx, entropy_cache, tmp_path):
    line = [a.format(cache=entropy_cache) for a in args]
    result = runner.invoke(app, ["deploy", "-m", str(demo_onnx), *line, "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "b").exists()


def test_implicit_on_a_qdq_model_points_to_the_fp32_export(demo_int8, entropy_cache, tmp_path):
    result = runner.invoke(app, ["deploy", "-m", demo_int8("max", "tensorrt")["model"], "--implicit",
                                 "--calib-cache", str(entropy_cache), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "calib-cache --from-qdq" in result.stderr and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- a cache is measured before it is trusted
def test_a_cache_is_measured_and_an_absurd_one_refused_unless_trusted(demo_onnx, calib, tiny_shapes, tmp_path):
    """calib-cache emulates its cache (a Q/DQ pair at each cached tensor) and records the drop; deploy --implicit
    shows it and refuses an absurd one. The absurd one here is what the old entropy gave the network input: a range
    of 0.0623 for pixels in 0..1."""
    from orinflow.io import record_path
    from orinflow.models import load_model
    from orinflow.optimize.quantize.cache_emulation import measure_cache
    from orinflow.optimize.quantize.calib_cache import write_cache

    np.save(tmp_path / "calib.npy", calib)
    made = orinflow.calib_cache(demo_onnx, calib=tmp_path / "calib.npy", data=tiny_shapes, split="val",
                                output=tmp_path / "good.cache", **QUIET)
    emulated = made["emulated"]
    assert emulated["kind"] == "metric" and emulated["images"] > 0 and not emulated["absurd"]
    assert abs(emulated["drop_points"]) < 10
    assert json.loads(record_path(tmp_path / "good.cache").read_text())["emulated"] == emulated
    _, scales = read_cache(tmp_path / "good.cache")
    clipped = dict(scales, **{onnx.load(str(demo_onnx)).graph.input[0].name: 0.0623 / LEVELS})
    bad = measure_cache(load_model(demo_onnx), clipped, calib, load_dataset_for(tiny_shapes), say=lambda m: None)
    assert bad["absurd"] and bad["drop_points"] > 10
    write_cache(clipped, tmp_path / "bad.cache")
    record_path(tmp_path / "bad.cache").write_text(json.dumps({"command": "calib-cache", "emulated": bad}))
    said = []
    with pytest.raises(orinflow.OrinflowError, match="lost too much when emulated.*--trust-cache"):
        orinflow.deploy(demo_onnx, implicit=True, calib_cache=tmp_path / "bad.cache", output=tmp_path / "b",
                        say=said.append)
    assert not (tmp_path / "b").exists()
    record = orinflow.deploy(demo_onnx, implicit=True, calib_cache=tmp_path / "good.cache", output=tmp_path / "g",
                             say=said.append)
    assert record["implicit"]["emulated"] == emulated and record["implicit"]["coverage"] > 0.5
    assert any("emulated by calib-cache" in line for line in said)
    assert "Emulated by calib-cache" in (tmp_path / "g" / "README.md").read_text()
    trusted = orinflow.deploy(demo_onnx, implicit=True, calib_cache=tmp_path / "bad.cache", trust_cache=True,
                              output=tmp_path / "t", **QUIET)
    assert trusted["implicit"]["emulated"]["absurd"]


def load_dataset_for(yaml_path):
    from orinflow.data import load_dataset

    return load_dataset(yaml_path, "val")


@pytest.mark.parametrize("case, text, message", [
    ("nan scale", "TRT-8600-EntropyCalibration2\nimages: 7fc00000\n", "no INT8 range gives"),
    ("inf scale", "TRT-8600-EntropyCalibration2\nimages: 7f800000\n", "no INT8 range gives"),
    ("negative scale", "TRT-8600-EntropyCalibration2\nimages: bc010204\n", "no INT8 range gives"),
    ("zero scale", "TRT-8600-EntropyCalibration2\nimages: 00000000\n", "no INT8 range gives"),
    ("denormal scale", "TRT-8600-EntropyCalibration2\nimages: 00000010\n", "no INT8 range gives"),
    ("a tensor twice", "TRT-8600-EntropyCalibration2\nimages: 3c010204\nimages: 3c010204\n", "listed twice"),
    ("header only", "TRT-8600-EntropyCalibration2\n", "no tensor"),
    ("bad header", "TRT-EntropyCalibration2\nimages: 3c010204\n", "TRT-<version>-<calibrator>"),
    ("another calibrator", "TRT-8600-MinMaxCalibration\nimages: 3c010204\n", "ignores such a cache"),
    ("another model", "TRT-8600-EntropyCalibration2\nsomething_else: 3c010204\n", "covers none of"),
])
def test_damaged_or_foreign_caches_are_refused_in_one_line(case, text, message, demo_onnx, tmp_path):
    cache = tmp_path / "x.cache"
    cache.write_text(text)
    result = runner.invoke(app, ["deploy", "-m", str(demo_onnx), "--implicit", "--calib-cache", str(cache),
                                 "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and message in " ".join(result.stderr.split()), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    if case not in ("another calibrator", "another model"):  # inspect reads the cache alone
        assert runner.invoke(app, ["inspect", "-m", str(cache)]).exit_code == 2


def test_a_cache_is_read_with_a_size_cap(tmp_path, monkeypatch):
    from orinflow.optimize.quantize import calib_cache

    cache = tmp_path / "big.cache"
    cache.write_text("TRT-8600-EntropyCalibration2\n" + "".join(f"t{i}: 3c010204\n" for i in range(2000)))
    monkeypatch.setattr(calib_cache, "MAX_CACHE_BYTES", 1000)
    with pytest.raises(orinflow.OrinflowError, match="not a calibration cache"):
        calib_cache.read_cache(cache)


def test_implicit_build_flags_follow_fp16(demo_onnx, entropy_cache, tmp_path):
    record = orinflow.deploy(demo_onnx, implicit=True, calib_cache=entropy_cache, fp16=False,
                             output=tmp_path / "b", **QUIET)
    assert "--int8" in record["build_engine"] and "--fp16" not in record["build_engine"]
    assert "--fp16" not in (tmp_path / "b" / "build_engine.sh").read_text()


def test_calib_cache_refuses_early_and_writes_the_cache_and_its_record_together(demo_onnx, demo_int8, calib,
                                                                                tmp_path, monkeypatch):
    import errno

    from orinflow.optimize.quantize import cache_make, calib_cache

    np.save(tmp_path / "calib.npy", calib[:2])
    cpu = demo_int8("max", "cpu")["model"]
    with pytest.raises(orinflow.OrinflowError, match="uint8 with zero points.*--target tensorrt"):
        orinflow.calib_cache(from_qdq=cpu, output=tmp_path / "q.cache", **QUIET)
    half = export_half(demo_onnx, tmp_path)
    with pytest.raises(orinflow.OrinflowError, match="FP16 weights"):
        orinflow.calib_cache(half, calib=tmp_path / "calib.npy", output=tmp_path / "h.cache", **QUIET)
    # an unwritable output is found before any measuring
    monkeypatch.setattr(calib_cache, "activation_histograms", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(orinflow.OrinflowError, match="cannot be written to"):
        orinflow.calib_cache(demo_onnx, calib=tmp_path / "calib.npy", output=tmp_path / "ro" / "c.cache", **QUIET)
    monkeypatch.undo()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_make, "write_json", disk_full)
    with pytest.raises(orinflow.OrinflowError, match="No space left"):
        orinflow.calib_cache(demo_onnx, calib=tmp_path / "calib.npy", method="max", output=tmp_path / "f.cache",
                             **QUIET)
    assert not (tmp_path / "f.cache").exists() and not (tmp_path / "f.cache.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".f")]


def export_half(demo_onnx, tmp_path):
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(onnx.load(str(demo_onnx)), keep_io_types=True)
    onnx.save(half, str(tmp_path / "half.onnx"))
    return tmp_path / "half.onnx"
