"""Names from a model or its data, hostile to the formats they reach (docs/reliability.md, "One validator per output
format"): each is refused in one line naming the format, or written so that the format reads back exactly it.

Sources: the input, an output and an intermediate tensor's names, the class names, a file name. Files: nvinfer's
config_infer_primary.txt, labels.txt, the calibration cache, build_engine.sh's trtexec shape flags, the x86
bench.sh, the console and report.md.
"""
import json
import shlex

import onnx
import pytest
from typer.testing import CliRunner

import orinflow
from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.models.onnx_model import META_PROCESSING
from orinflow.optimize.quantize.calib_cache import read_cache

HOSTILE = {"newline": "\n", "return": "\r", "nul": "\x00", "semicolon": ";", "colon": ":", "equals": "=",
           "open": "[", "close": "]", "hash": "#", "accent": "é"}
QUIET = {"say": lambda m: None}


def renamed(source, tmp_path, tag, *, tensor=None, new=None, names=None, dynamic_input=False):
    """A copy of `source` with one tensor renamed everywhere (graph input, output or intermediate), or its class
    names replaced in the stored processing."""
    model = onnx.load(str(source))
    if tensor is not None:
        for node in model.graph.node:
            node.input[:] = [new if name == tensor else name for name in node.input]
            node.output[:] = [new if name == tensor else name for name in node.output]
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            if value.name == tensor:
                value.name = new
    if names is not None:
        prop = next(p for p in model.metadata_props if p.key == META_PROCESSING)
        prop.value = json.dumps(json.loads(prop.value) | {"names": names})
    if dynamic_input:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / f"{tag}.onnx"
    onnx.save(model, str(path))
    return path


def refused_or(call, expected_format):
    """The call's result, or None when it refused with one line naming `expected_format`."""
    try:
        return call()
    except OrinflowError as e:
        assert expected_format in str(e) and "\n" not in str(e), str(e)
        return None


@pytest.mark.parametrize("char", list(HOSTILE.values()), ids=list(HOSTILE))
def test_tensor_and_class_names_reach_each_format_exactly_or_not_at_all(char, demo_onnx, calib, tmp_path):
    graph = onnx.load(str(demo_onnx))
    output, middle, first = graph.graph.output[0].name, graph.graph.node[3].output[0], graph.graph.input[0].name
    # an output's name -> nvinfer's output-blob-names
    model = renamed(demo_onnx, tmp_path, "out", tensor=output, new=f"out{char}put")
    bundle = refused_or(lambda: orinflow.deploy(model, output=tmp_path / "ds", nms="none", deepstream=True, **QUIET),
                        "config_infer_primary.txt")
    if char in "\n\r\x00;#":
        assert bundle is None and not (tmp_path / "ds").exists()
    else:
        config = dict(line.split("=", 1) for line in (tmp_path / "ds" / "config_infer_primary.txt").read_text()
                      .splitlines() if "=" in line and not line.startswith("["))
        assert config["output-blob-names"].split(";") == [f"out{char}put"]
    # class names -> labels.txt (a detector's: one per line)
    names = {0: f"ci{char}rcle", 1: "square", 2: "triangle"}
    model = renamed(demo_onnx, tmp_path, "names", names=names)
    bundle = refused_or(lambda: orinflow.deploy(model, output=tmp_path / "lb", nms="none", deepstream=True, **QUIET),
                        "labels.txt")
    if char in "\n\r\x00;":
        assert bundle is None and not (tmp_path / "lb").exists()
    else:
        assert (tmp_path / "lb" / "labels.txt").read_text().splitlines() == list(names.values())
    # the input's and an intermediate tensor's names -> the calibration cache
    model = renamed(renamed(demo_onnx, tmp_path, "mid", tensor=middle, new=f"mid{char}dle"), tmp_path, "both",
                    tensor=first, new=f"in{char}put")
    import numpy as np

    np.save(tmp_path / "c.npy", calib[:2])
    made = refused_or(lambda: orinflow.calib_cache(model, calib=tmp_path / "c.npy", method="max",
                                                   output=tmp_path / "m.cache", **QUIET), "calibration cache")
    if char in "\n\r\x00":
        assert made is None and not (tmp_path / "m.cache").exists()
    else:
        _, scales = read_cache(tmp_path / "m.cache")
        assert {f"mid{char}dle", f"in{char}put"} <= set(scales)
        assert len((tmp_path / "m.cache").read_text().splitlines()) == len(scales) + 1


@pytest.mark.parametrize("char", [";", ":", "[", "]", "=", "#", " ", "é"])
def test_input_names_reach_trtexec_and_benchmark_app_flags_exactly_or_not_at_all(char, demo_onnx, tmp_path):
    first = onnx.load(str(demo_onnx)).graph.input[0].name
    model = renamed(demo_onnx, tmp_path, "in", tensor=first, new=f"im{char}ages", dynamic_input=True)
    bundle = refused_or(lambda: orinflow.deploy(model, output=tmp_path / "b", opt_batch=2, max_batch=2, **QUIET),
                        "trtexec's shape flags")
    if char in ":' ":
        assert bundle is None and not (tmp_path / "b").exists()
    else:
        shapes = [a for a in bundle["build_engine"] if a.startswith("--minShapes=")]
        assert shapes == [f"--minShapes=im{char}ages:1x3x256x256"]
        assert shlex.split((tmp_path / "b" / "build_engine.sh").read_text().split("\n", 6)[-1].replace("\\\n", ""),
                           comments=True)[1:] == bundle["build_engine"][1:]
    x86 = orinflow.deploy(model, output=tmp_path / "x86", target="openvino", **QUIET)  # the shape carries no name
    assert x86["bench"]["1"][x86["bench"]["1"].index("-shape") + 1] == "[1,3,256,256]"


def test_classifier_labels_are_one_line_and_class_ids_must_be_complete():
    from orinflow.deploy.deepstream import labels_text
    from orinflow.models.processing import Processing

    classes = Processing(task="classify", imgsz=(32, 32), names={0: "cat", 1: "dog", 2: "bird"})
    assert labels_text(classes) == "cat;dog;bird\n"  # nvinfer reads a classifier's labels from one ';' line
    gaps = Processing(task="detect", imgsz=(64, 64), names={0: "a", 5: "b", 9: "c"}, head="xywh_scores")
    with pytest.raises(OrinflowError, match="not 0..2"):
        labels_text(gaps)


def test_file_names_print_as_written_and_stay_in_their_report_cell(demo_onnx, calib, tiny_shapes, tmp_path):
    """Console text is printed literally (Rich markup off): `-o 'x[/].cache'` had written the cache, then failed with
    MarkupError, and `exp[v2]` printed as `exp`. In report.md a `|` in a model's name would open a new cell."""
    import shutil

    import numpy as np

    np.save(tmp_path / "c.npy", calib[:2])
    cache = tmp_path / "x[v2][bold]b[/].cache"
    result = CliRunner().invoke(app, ["calib-cache", "-m", str(demo_onnx), "--calib", str(tmp_path / "c.npy"),
                                      "--method", "max", "-o", str(cache)])
    assert result.exit_code == 0, result.output
    assert cache.name in "".join(result.output.split()) and cache.is_file()
    model = tmp_path / "m|x[v2].onnx"
    shutil.copy(demo_onnx, model)
    result = CliRunner().invoke(app, ["evaluate", "-m", str(model), "--yaml", str(tiny_shapes), "--runs", "0",
                                      "--json", str(tmp_path / "rec.json")])
    assert result.exit_code == 0, result.output
    assert model.name in "".join(result.output.split())
    written = orinflow.report([tmp_path / "rec.json"], output=tmp_path / "report")
    rows = [line for line in open(written["markdown"]).read().splitlines() if line.startswith("| m\\|x")]
    header = next(line for line in open(written["markdown"]).read().splitlines() if line.startswith("| model"))
    cells = lambda line: len(line.replace("\\|", "").split("|"))  # noqa: E731
    assert len(rows) == 1 and cells(rows[0]) == cells(header)
