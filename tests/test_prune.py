"""Route 5, `orinflow prune`: dependency-aware channel pruning on real torch-pruning, Ultralytics and torchvision
models, tiny inputs. The pruned checkpoints go through the other routes with torch-pruning made unimportable."""
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import DEMO_MODEL, ROOT
from orinflow.cli import app

runner = CliRunner()


def _prune(args: list[str]):
    return runner.invoke(app, ["prune", *args])


def _without_torch_pruning(code: str, cwd) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import torch_pruning` fails (a pruned model must not need it)."""
    guard = "import sys; sys.modules['torch_pruning'] = None\n"
    return subprocess.run([sys.executable, "-c", guard + code], cwd=cwd, capture_output=True, text=True,
                          env={"YOLO_OFFLINE": "1", "ORINFLOW_QUIET": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("yaml", ["yolo26n.yaml"])  # YOLO11n has the same blocks; the demo has its DFL head
def test_ultralytics_yaml_prunes_exports_quantizes_and_evaluates(yaml, tiny_shapes, tmp_path, monkeypatch):
    """C2f/C3k2 halves, C2PSA attention and the (end-to-end) Detect head: 30% fewer FLOPs with every concat,
    add and split consistent, then export, quantize (tensorrt, lint 0) and evaluate without torch-pruning. The
    measured plan reads both heads' decoded outputs (on 2 probe images and 3 counts per group: the mechanics, not
    the plan's quality, which tests/test_allocation.py measures on the embedded detector)."""
    from orinflow.optimize.prune import plan as prune_plan

    monkeypatch.setattr(prune_plan, "PROBE_IMAGES", 2)
    monkeypatch.setattr(prune_plan, "MAX_LEVELS", 3)
    output = tmp_path / f"{yaml[:-5]}_pruned.pt"
    result = _prune(["-m", yaml, "--imgsz", "64", "--flops", "0.7", "--round-to", "8", "--epochs", "0",
                     "--yaml", str(tiny_shapes), "--plan", "measured", "--runs", "0", "-o", str(output)])
    assert result.exit_code == 0, result.output
    record = json.loads(output.with_name(output.name + ".json").read_text())
    assert record["plan"]["plan"] == "measured"
    assert record["flops_share"] <= 0.7 and record["after"]["params"] < record["before"]["params"]
    changed = [row for row in record["layers"] if row["channels_after"] != row["channels_before"]]
    assert len(changed) > 10
    assert all(why in ("output layer", "frozen") or why.startswith("coupled through")
               for why in record["protected"].values())
    assert any(why.startswith("coupled through") for why in record["protected"].values())  # the attention block
    code = f"""
from orinflow.models import load_model
from orinflow.export import export_onnx
import orinflow, json
adapter = load_model({str(output)!r}, imgsz=64)
assert adapter.family == "ultralytics", adapter.family
onnx = export_onnx(adapter, {str(tmp_path / 'pruned.onnx')!r})
quantized = orinflow.quantize(onnx.path, data={str(tiny_shapes)!r}, num_images=4, output={str(tmp_path / 'q.onnx')!r})
assert quantized["qdq_report"]["lint"] == [], quantized["qdq_report"]["lint"]
record = orinflow.evaluate({str(tmp_path / 'q.onnx')!r}, {str(tiny_shapes)!r}, runs=0, class_map="0:0,1:1,2:2")
print(json.dumps(record["metrics"]))
"""
    done = _without_torch_pruning(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mAP50-95" in done.stdout


def _pruned_yolov8(monkeypatch, split_blocks: bool, guard: bool):
    from orinflow.models import load_model, prunable_copy
    from orinflow.optimize.prune import graph as prune_graph
    from orinflow.optimize.prune import pruner

    if not split_blocks:
        monkeypatch.setattr("orinflow.models.ultralytics.split_chunked_blocks", lambda model: 0)
    if not guard:
        monkeypatch.setattr(prune_graph, "_node_channel_wise", lambda node: True)
    module = prunable_copy(load_model("yolov8n.yaml", imgsz=64, fuse=False))
    example = torch.zeros(1, 3, 64, 64)
    protected = prune_graph.protected_layers(module, example)
    names = {m: n for n, m in module.named_modules()}
    named = {names[m]: why for m, why in protected.items()}
    trial = pruner.pruned_copy(module, example, pruner.PruneConfig(flops=None, ratio=0.3, round_to=8), named)
    trial(torch.zeros(1, 3, 64, 64))
    return named


def test_chunked_blocks_are_split_so_their_halves_prune(monkeypatch):
    assert not any("Split" in why for why in _pruned_yolov8(monkeypatch, split_blocks=True, guard=True).values())


def test_without_the_split_rewrite_the_guard_protects_the_halves(monkeypatch):
    protected = _pruned_yolov8(monkeypatch, split_blocks=False, guard=True)
    assert any("Split" in why for why in protected.values())


def test_without_either_the_pruned_graph_breaks(monkeypatch):
    """Remove the dependency handling (the rewrite and the guard): torch-pruning alone breaks C2f."""
    with pytest.raises(Exception):
        _pruned_yolov8(monkeypatch, split_blocks=False, guard=False)


def test_demo_detector_prunes_with_distillation_and_keeps_its_family(tiny_shapes, tmp_path):
    """The embedded detector: one pruning step and a few distillation steps; the checkpoint is Ultralytics', the
    record holds params, FLOPs, the fine-tuning's settings and the side-by-side ONNX latency with the CPU's name."""
    output = tmp_path / "shapes_pruned.pt"
    result = _prune(["-m", str(DEMO_MODEL), "--imgsz", "128", "--yaml", str(tiny_shapes), "--flops", "0.8",
                     "--round-to", "8", "--epochs", "1", "--max-steps", "2", "--batch", "4", "--runs", "3",
                     "--mixup", "--schedule", "cosine", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime CPU batch 1" in result.output
    record = json.loads(output.with_name(output.name + ".json").read_text())
    assert record["steps"][0]["losses"] and record["onnx"]["cpu"]
    assert record["training"]["mixup"] and record["training"]["schedule"] == "cosine" and record["training"]["foreground"]
    assert record["onnx"]["size_bytes"]["pruned"] < record["onnx"]["size_bytes"]["original"]
    from orinflow.models import load_model

    adapter = load_model(output, imgsz=128)
    assert adapter.family == "ultralytics" and adapter.num_params() < load_model(DEMO_MODEL).num_params()
    # the report knows the pruned model through its export and quantization records: routes prune, prune+ptq
    import orinflow
    from orinflow.report.records import make_row

    fp32 = tmp_path / "pruned.onnx"
    orinflow.export(output, imgsz=128, output=fp32)
    orinflow.quantize(fp32, data=tiny_shapes, num_images=4, output=tmp_path / "pruned_int8.onnx", say=lambda *_: 0)
    routes = [make_row(orinflow.evaluate(path, tiny_shapes, runs=0, say=lambda *_: 0)).route
              for path in (fp32, tmp_path / "pruned_int8.onnx")]
    assert routes == ["prune", "prune+ptq"]


def test_yolov5_checkpoint_keeps_yolov5_class_paths(tmp_path, tiny_shapes):
    """A pruned original-YOLOv5 model pickles models.common/models.yolo names, as the yolov5 repository does; a
    step of YOLOv5's own label loss leaves no training state in it."""
    from orinflow.models import load_model
    from orinflow.models.base import pickle_classes
    from orinflow.optimize.prune import steps as prune_steps
    from orinflow.optimize.prune import pruner
    from test_yolov5_modules import _pickle_classes, _v7_model

    paths = _pickle_classes()
    sys.modules.update(paths)
    try:
        torch.manual_seed(0)
        source = tmp_path / "v7.pt"
        torch.save({"model": _v7_model(paths), "epoch": -1}, source)
    finally:
        for name in paths:
            del sys.modules[name]
    adapter = load_model(source, imgsz=64, fuse=False)
    output = tmp_path / "v7_pruned.pt"
    from orinflow.data import load_dataset
    from orinflow.optimize.train.config import QATConfig

    labels = QATConfig(epochs=1, max_steps=1, batch=2, distill=False, labels=True)
    record = prune_steps.run_prune(adapter, pruner.PruneConfig(flops=None, ratio=0.3, round_to=8), output,
                             load_dataset(tiny_shapes, "train"), labels, say=lambda *_: 0)
    assert record["steps"][0]["losses"]
    modules = {module for module, _ in pickle_classes(output)}
    assert {"models.common", "models.yolo"} <= modules and not any(m.startswith("orinflow") for m in modules)
    # Contract/Expand and the transformer reshape channels: those groups are protected, not broken
    assert any(why.startswith("coupled through") for why in record["protected"].values())
    pruned = load_model(output, imgsz=64)
    assert pruned.family == "yolov5" and pruned.num_params() < adapter.num_params()
    assert pruned.module(torch.zeros(1, 3, 64, 64)).shape[-1] == 8
    assert "raw" not in vars(pruned.module.model[-1]) and not pruned.module.model[-1].keep_raw


def test_resnet_prunes_to_a_state_dict_that_loads_with_its_arch(class_tree, tmp_path):
    """torchvision-style residual classifier (option-A shortcuts pad channels: protected), label fine-tuning."""
    arch = f"{ROOT / 'tests' / 'assets' / 'resnet_cifar.py'}:resnet20"
    output = tmp_path / "r20_pruned.pt"
    result = _prune(["--arch", arch, "-m", "", "--imgsz", "32", "--yaml", str(class_tree), "--flops", "0.7",
                     "--round-to", "4", "--epochs", "1", "--batch", "4", "--runs", "0", "--importance", "l2",
                     "--plan", "measured", "-o", str(output)])
    assert result.exit_code == 0, result.output
    record = json.loads(output.with_name(output.name + ".json").read_text())
    assert record["flops_share"] <= 0.7
    plan = record["plan"]  # with data, each group's cuts were measured on the classifier's logits
    assert plan["plan"] == "measured" and plan["probe_images"] > 0
    assert all(group["loss_increase"] for group in plan["groups"] if group["kept"] < group["channels"])
    saved = torch.load(output, weights_only=True)
    assert "orinflow_pruned" in saved
    from orinflow.models import load_model

    adapter = load_model(output, arch=arch, imgsz=32)
    assert adapter.num_params() == record["after"]["params"]
    assert adapter.module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_resnet_prunes_its_last_stage_through_pooling_and_fc():
    """Global average pooling and the classifier's weight transpose keep channels: the last stage (coupled to the
    fc through them) is prunable; only the fc itself is protected."""
    from orinflow.models import load_model, prunable_copy
    from orinflow.optimize.prune import graph as prune_graph

    module = prunable_copy(load_model(None, arch="resnet18", imgsz=64))
    protected = prune_graph.protected_layers(module, torch.zeros(1, 3, 64, 64))
    assert {type(m).__name__ for m in protected} == {"Linear"}, set(protected.values())


class _FreesATemporaryBeforeItsOutput(torch.nn.Module):
    """A module reads a temporary that is freed just before the output is made, so the output's Python
    object lands at the freed one's address (its id)."""

    def __init__(self):
        super().__init__()
        self.conv, self.idle, self.fc = torch.nn.Conv2d(3, 4, 1), torch.nn.Identity(), torch.nn.Linear(4, 2)

    def forward(self, x):
        pooled = self.conv(x).mean((2, 3))
        self.idle(pooled * 1.0)
        return self.fc(pooled)


def test_output_layer_is_found_when_the_output_reuses_a_freed_tensors_id():
    """Was: the output looked 'consumed' by a module (ids compared after the temporary was freed), so the
    classifier's final layer went unprotected and lost classes: seen as 'size of tensor a (10) must match
    the size of tensor b (7)' in 2 of about 40 ResNet-20 prune runs."""
    from orinflow.optimize.common import tracing

    module = _FreesATemporaryBeforeItsOutput()
    assert tracing.output_layers(module, torch.zeros(1, 3, 8, 8)) == {module.fc}


def test_an_output_made_by_an_in_place_activation_keeps_its_layer():
    """Was: an in-place activation (SiLU(inplace=True) in older Ultralytics checkpoints, one module shared by
    every Conv) returns its input, so the output looked read by a module, and yolov8n-seg's prototype conv went
    unprotected: pruning cut the features the prototypes read from and the model no longer ran."""
    from orinflow.optimize.common import tracing

    class EndsInPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head, self.act = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1), torch.nn.SiLU(True)

        def forward(self, x):
            return self.act(self.head(self.act(self.conv(x))))

    module = EndsInPlace()
    assert tracing.output_layers(module, torch.zeros(1, 3, 8, 8)) == {module.head}


def test_a_model_without_an_own_output_is_refused():
    """Returning only what a layer also reads leaves no output layer to protect: refused, not pruned blind."""
    from orinflow.errors import OrinflowError
    from orinflow.optimize.common import tracing

    class ReturnsItsInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            self.conv(x)
            return x

    with pytest.raises(OrinflowError, match="output layers cannot be found"):
        tracing.output_layers(ReturnsItsInput(), torch.zeros(1, 3, 8, 8))


def test_dry_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _prune(["-m", "yolov8n.yaml", "--imgsz", "64", "--epochs", "0", "--dry-run", "--round-to", "8", "--plan",
                     "measured"])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.output and "->" in result.output
    assert "cut evenly" in result.output and "(even plan)" in result.output  # no data to measure the cuts on
    assert not any(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("args, message", [
    (["--importance", "random"], "unknown --importance 'random'"),
    (["--plan", "greedy"], "unknown --plan 'greedy'"),
    (["--flops", "0"], "--flops is the share of the original FLOPs to keep"),
    (["--flops", "1"], "--flops is the share of the original FLOPs to keep"),
    (["--flops", "0.01"], "out of reach"),
    (["--schedule", "linear"], "--schedule must be one of constant, cosine"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _prune(["-m", "yolov8n.yaml", "--imgsz", "64", "--epochs", "0", "--round-to", "8", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not any(tmp_path.rglob("*.pt"))


def test_max_drop_undoes_the_step_that_loses_too_much(tiny_shapes, tmp_path):
    """Two steps without fine-tuning, scored on a selection split: a budget between the two steps' drops undoes the
    second and keeps the first; a budget the first step already breaks writes nothing."""
    output = tmp_path / "budget.pt"
    args = ["-m", str(DEMO_MODEL), "--imgsz", "128", "--yaml", str(tiny_shapes), "--flops", "0.5", "--round-to", "8",
            "--steps", "2", "--epochs", "0", "--select-split", "val", "--plan", "even", "--runs", "0", "-o", str(output)]
    assert _prune([*args, "--max-drop", "1"]).exit_code == 0
    record = json.loads(output.with_name(output.name + ".json").read_text())
    drops = [record["selection"]["before"] - step["selection_score"] for step in record["steps"]]
    assert len(drops) == 2 and drops[0] < drops[1], drops
    output.unlink()
    result = _prune([*args, "--max-drop", str((drops[0] + drops[1]) / 2)])
    assert result.exit_code == 0, result.output
    kept = json.loads(output.with_name(output.name + ".json").read_text())
    assert kept["steps"][1]["undone"] and kept["after"]["params"] == kept["steps"][0]["params"]
    output.unlink()
    result = _prune([*args, "--max-drop", str(drops[0] / 2)])
    assert result.exit_code != 0 and "nothing written" in result.output and not output.exists()


def test_every_layer_protected_is_refused(tmp_path):
    model_file = tmp_path / "linear.py"
    model_file.write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                          "torch.nn.Linear(3 * 8 * 8, 10))\n")
    result = _prune(["--arch", f"{model_file}:build", "-m", "", "--imgsz", "8", "--epochs", "0",
                     "-o", str(tmp_path / "out.pt")])
    assert result.exit_code != 0 and "nothing to prune" in result.output
    assert not (tmp_path / "out.pt").exists()


def test_a_pruned_model_prunes_again_and_keeps_its_output_layers(tiny_shapes, tmp_path):
    """Was: torch-pruning's new parameters require gradients while the checkpoint's others did not, so a pruned
    copy read every layer the step left whole as frozen; walking back through them, output_layers lost the
    stride-8 Detect convs, and pruning the pruned model again could cut its box and class channels."""
    import orinflow
    from orinflow.models import load_model
    from orinflow.optimize.common import tracing

    def output_convs(path) -> dict[str, int]:
        module = load_model(path, imgsz=128).export_module()
        names = {m: n for n, m in module.named_modules()}
        return {names[m]: m.out_channels for m in tracing.output_layers(module, torch.zeros(1, 3, 128, 128))}

    first, second = tmp_path / "once.pt", tmp_path / "twice.pt"
    for source, target in ((DEMO_MODEL, first), (first, second)):
        orinflow.prune(source, tiny_shapes, imgsz=128, flops=0.8, round_to=8, plan="even", epochs=0, runs=0,
                       output=target, say=lambda *_: 0)
    original = output_convs(DEMO_MODEL)
    assert len(original) == 6 and output_convs(first) == original and output_convs(second) == original
    assert load_model(second).num_params() < load_model(first).num_params()
