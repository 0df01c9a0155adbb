"""Bad input across every command: exit code 2, one line that names the file or flag, nothing written or changed.

Each case runs the real command in-process on the embedded detector and real files. Before and after
it, every file under the inputs folder, the output folder and the working folder is checksummed with
its permission bits: a case passes only when nothing appeared, vanished or changed.
"""
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app
from tests_helpers import resnet20_state

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_onnx, calib) -> Path:
    """A user's folder: models, calibration arrays, datasets, and damaged versions of each."""
    from orinflow.demo import shapes

    root = tmp_path_factory.mktemp("inputs")
    shutil.copy(DEMO_MODEL, root / "demo.pt")
    shutil.copy(demo_onnx, root / "m.onnx")
    shutil.copy(demo_onnx.with_suffix(".json"), root / "m.json")
    np.save(root / "c.npy", calib[:4])
    np.save(root / "c_uint8.npy", (calib[:4] * 255).astype(np.uint8))
    np.save(root / "c_255.npy", calib[:4] * 255)
    np.save(root / "c_nan.npy", np.full_like(calib[:2], np.nan))
    np.save(root / "c_shape.npy", calib[:2, :, :128, :128])
    data = DEMO_MODEL.read_bytes()
    (root / "truncated.pt").write_bytes(data[:len(data) // 2])
    (root / "damaged.onnx").write_bytes(os.urandom(4096))
    torch.save(resnet20_state(), root / "weights.pt")
    (root / "notes.txt").write_text("not a record\n")
    yaml_path = shapes.generate(root / "data", {"train": (4, 0), "val": (3, 1)})
    _bad_dataset(yaml_path, root / "bad_class", lambda lines: ["7 0.5 0.5 0.2 0.2"] + lines)
    _bad_dataset(yaml_path, root / "bad_columns", lambda lines: ["0 0.5 0.5"] + lines)
    _bad_dataset(yaml_path, root / "bad_image", None)
    _bad_dataset(yaml_path, root / "bad_nan", lambda lines: ["0 0.5 nan 0.2 0.2"] + lines)
    _bad_dataset(yaml_path, root / "other_names", lambda lines: lines, {0: "dog", 1: "cat", 2: "bird"})
    (root / "empty").mkdir()
    _foreign_and_taken(root)
    _bad_metadata(root)
    return root


def _bad_metadata(root: Path) -> None:
    """The embedded detector's ONNX with one field of its stored processing broken (meta_<case>.onnx)."""
    import onnx

    from orinflow.models.onnx_model import META_PROCESSING

    for case, change in BAD_METADATA.items():
        model = onnx.load(str(root / "m.onnx"))
        prop = next(p for p in model.metadata_props if p.key == META_PROCESSING)
        prop.value = json.dumps(json.loads(prop.value) | change)
        onnx.save(model, str(root / f"meta_{case}.onnx"))
    model = onnx.load(str(root / "m.onnx"))
    model.metadata_props.add(key="orinflow.channel_aligned", value='{"conv": {"output_channels": -3}}')
    onnx.save(model, str(root / "meta_aligned.onnx"))


def _foreign_and_taken(root: Path) -> None:
    """An ONNX without orinflow's metadata (what `adopt` reads); records of other commands where each kind of
    output would put its own, and folders named like outputs."""
    import onnx

    foreign = onnx.load(str(root / "m.onnx"))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(root / "foreign.onnx"))
    for suffix in (".onnx", ".npy", ".cache", ".pt", ".json"):
        record = {"command": "export" if suffix == ".npy" else "calibrate", "output": str(root / "other.bin")}
        (root / f"empty{suffix}").mkdir()
        target = root / f"taken{suffix}"
        (target.with_suffix(".json") if suffix in (".onnx", ".json") else
         target.with_name(target.name + ".json")).write_text(json.dumps(record))


def _bad_dataset(yaml_path: Path, target: Path, edit, names: dict | None = None) -> Path:
    """A copy of the shapes dataset with its first val label file edited, or its first val image damaged, or
    other class `names`."""
    import yaml

    shutil.copytree(yaml_path.parent, target)
    config = yaml.safe_load((target / yaml_path.name).read_text())
    config["path"] = str(target)
    config["names"] = names or config["names"]
    (target / yaml_path.name).write_text(yaml.safe_dump(config))
    if edit is None:
        image = sorted((target / "images" / "val").iterdir())[0]
        image.write_bytes(b"not an image" * 10)
    else:
        label = sorted((target / "labels" / "val").iterdir())[0]
        label.write_text("\n".join(edit(label.read_text().splitlines())) + "\n")
    return target


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """Every file under the folders: its checksum and permission bits."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                found[str(path)] = (hashlib.sha1(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
            else:
                found[str(path)] = ("folder", 0)
    return found


D = "{inputs}/data/shapes.yaml"  # the good dataset
# The processing fields broken in meta_<case>.onnx (_bad_metadata)
BAD_METADATA = {"iou": {"nms_iou": 5}, "std": {"std": [0, 1, 1]}, "huge": {"imgsz": [40000, 40000]},
                "size": {"imgsz": [320, 320]}, "head": {"head": "xywh_obj_scores"},
                "names": {"names": {"0": "a", "1": "b"}}, "task": {"task": "obb"}, "crop": {"crop_fraction": 0}}
CASES = [
    # ---- export
    ("export-missing-model", "export -m {inputs}/missing.pt", "missing.pt"),
    ("export-truncated-checkpoint", "export -m {inputs}/truncated.pt", "truncated or damaged"),
    ("export-output-suffix", "export -m {inputs}/demo.pt -o {out}/x.json", "-o"),
    ("export-output-folder", "export -m {inputs}/demo.pt -o {out}", "-o"),
    ("export-onnx-input", "export -m {inputs}/m.onnx", "already ONNX"),
    ("export-imgsz-stride", "export -m {inputs}/demo.pt --imgsz 250", "--imgsz"),
    ("export-state-dict-no-arch", "export -m {inputs}/weights.pt", "--arch"),
    ("export-arch-mismatch", "export -m {inputs}/weights.pt --arch resnet18", "Missing key(s)"),
    ("export-missing-image", "export -m {inputs}/demo.pt --image {inputs}/none.jpg -o {out}/x.onnx", "none.jpg"),
    ("export-opset-too-old", "export -m {inputs}/demo.pt --imgsz 256 --opset 5 -o {out}/e.onnx", "--opset 5"),
    ("export-imgsz-zero", "export -m {inputs}/demo.pt --imgsz 0 -o {out}/e.onnx", "--imgsz"),
    ("export-imgsz-huge", "export -m {inputs}/demo.pt --imgsz 40000 -o {out}/e.onnx", "--imgsz"),
    ("export-bad-mean", "export -m {inputs}/weights.pt --arch {arch} --mean 1,2", "--mean"),
    # ---- adopt
    ("adopt-pytorch-model", "adopt -m {inputs}/demo.pt -o {out}/a.onnx", "not ONNX"),
    ("adopt-orinflow-model", "adopt -m {inputs}/m.onnx --head yolox -o {out}/a.onnx", "already carries"),
    ("adopt-imgsz-negative", "adopt -m {inputs}/foreign.onnx --imgsz -5 -o {out}/a.onnx", "--imgsz"),
    ("adopt-output-is-input", "adopt -m {inputs}/m.onnx -o {inputs}/m.onnx", "overwrite the input"),
    # ---- calibrate
    ("calibrate-no-data", "calibrate -m {inputs}/m.onnx", "--yaml"),
    ("calibrate-output-suffix", "calibrate -m {inputs}/m.onnx --yaml " + D + " -o {out}/c.txt", "-o"),
    ("calibrate-num-images", "calibrate -m {inputs}/m.onnx --yaml " + D + " --num-images 0", "--num-images"),
    ("calibrate-missing-split", "calibrate -m {inputs}/m.onnx --yaml " + D + " --split test", "'test'"),
    ("calibrate-missing-data", "calibrate -m {inputs}/m.onnx --yaml {inputs}/nodata.yaml", "nodata.yaml"),
    ("calibrate-output-is-model", "calibrate -m {inputs}/m.onnx --yaml " + D + " -o {inputs}/m.onnx", "-o"),
    # ---- quantize
    ("quantize-no-calib", "quantize -m {inputs}/m.onnx", "--calib"),
    ("quantize-output-suffix", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy -o {out}/q.json", "-o"),
    ("quantize-output-is-input", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy -o {inputs}/m.onnx",
     "overwrite the input"),
    ("quantize-calib-uint8", "quantize -m {inputs}/m.onnx --calib {inputs}/c_uint8.npy -o {out}/q.onnx", "uint8"),
    ("quantize-calib-range", "quantize -m {inputs}/m.onnx --calib {inputs}/c_255.npy -o {out}/q.onnx",
     "input range"),
    ("quantize-calib-nan", "quantize -m {inputs}/m.onnx --calib {inputs}/c_nan.npy -o {out}/q.onnx", "NaN"),
    ("quantize-calib-shape", "quantize -m {inputs}/m.onnx --calib {inputs}/c_shape.npy -o {out}/q.onnx", "shape"),
    ("quantize-mode", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --mode fp4", "--mode"),
    ("quantize-search-cpu", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --method search --target cpu",
     "--method search"),
    ("quantize-percentile", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --percentile 50", "--percentile"),
    ("quantize-exclude-regex", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --exclude (", "--exclude"),
    ("quantize-negative-budget", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --max-drop -1", "--max-drop"),
    ("quantize-budget-no-select", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --max-drop 0.3",
     "--select-yaml"),
    ("quantize-pytorch-model", "quantize -m {inputs}/demo.pt --calib {inputs}/c.npy -o {out}/q.onnx", "not ONNX"),
    ("quantize-damaged-onnx", "quantize -m {inputs}/damaged.onnx --calib {inputs}/c.npy -o {out}/q.onnx",
     "damaged.onnx"),
    ("quantize-onto-another-record", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy -o {out}/taken.onnx",
     "record of `orinflow calibrate`"),
    # ---- ptq
    ("ptq-no-data", "ptq -m {inputs}/demo.pt", "--yaml"),
    ("ptq-method", "ptq -m {inputs}/demo.pt --yaml " + D + " --methods foo", "--method"),
    ("ptq-target", "ptq -m {inputs}/demo.pt --yaml " + D + " --targets gpu", "--target"),
    ("ptq-output-file", "ptq -m {inputs}/demo.pt --yaml " + D + " -o {inputs}/m.onnx", "is a file"),
    ("ptq-threads", "ptq -m {inputs}/demo.pt --yaml " + D + " --threads -1", "--threads"),
    # ---- evaluate
    ("evaluate-json-onto-model", "evaluate -m {inputs}/m.onnx --yaml " + D + " --json {inputs}/m.onnx", "--json"),
    ("evaluate-json-onto-record", "evaluate -m {inputs}/m.onnx --yaml " + D + " --json {inputs}/m.json",
     "record of `orinflow export`"),
    ("evaluate-conf-zero", "evaluate -m {inputs}/m.onnx --yaml " + D + " --conf 0", "--conf"),
    ("evaluate-conf-above-one", "evaluate -m {inputs}/m.onnx --yaml " + D + " --conf 1.5", "--conf"),
    ("evaluate-iou-zero", "evaluate -m {inputs}/m.onnx --yaml " + D + " --iou 0", "--iou"),
    ("evaluate-iou-above-one", "evaluate -m {inputs}/m.onnx --yaml " + D + " --iou 1.2", "--iou"),
    ("evaluate-max-det", "evaluate -m {inputs}/m.onnx --yaml " + D + " --max-det 0", "--max-det"),
    ("evaluate-threads", "evaluate -m {inputs}/m.onnx --yaml " + D + " --threads -2", "--threads"),
    ("evaluate-batch", "evaluate -m {inputs}/m.onnx --yaml " + D + " --batch 0", "--batch"),
    ("evaluate-runtime", "evaluate -m {inputs}/m.onnx --yaml " + D + " --runtime foo", "--runtime"),
    ("evaluate-int8-kernels", "evaluate -m {inputs}/m.onnx --yaml " + D + " --int8-kernels fast", "--int8-kernels"),
    ("evaluate-int8-kernels-tensorrt", "evaluate -m {inputs}/m.onnx --yaml " + D + " --runtime tensorrt "
     "--int8-kernels exact", "no integer path"),
    ("evaluate-int8-kernels-torch", "evaluate -m {inputs}/demo.pt --yaml " + D + " --int8-kernels integer",
     "no integer path"),
    ("compare-int8-kernels", "compare {inputs}/demo.pt {inputs}/demo.pt --yaml " + D + " --int8-kernels exact "
     "-o {out}/c", "no integer path"),
    ("quantize-reduce-range-tensorrt", "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy --reduce-range "
     "-o {out}/q.onnx", "--target cpu"),
    ("ptq-int8-kernels", "ptq -m {inputs}/demo.pt --yaml " + D + " --int8-kernels 8bit", "--int8-kernels"),
    ("evaluate-label-class", "evaluate -m {inputs}/m.onnx --yaml {inputs}/bad_class/shapes.yaml --runs 0",
     "class id 7"),
    ("evaluate-label-columns", "evaluate -m {inputs}/m.onnx --yaml {inputs}/bad_columns/shapes.yaml --runs 0",
     "3 columns"),
    ("evaluate-label-nan", "evaluate -m {inputs}/m.onnx --yaml {inputs}/bad_nan/shapes.yaml --runs 0", "NaN"),
    ("evaluate-other-classes", "evaluate -m {inputs}/m.onnx --yaml {inputs}/other_names/shapes.yaml --runs 0",
     "class 0 is 'circle' in the model but 'dog'"),
    ("evaluate-class-map", "evaluate -m {inputs}/m.onnx --yaml " + D + " --runs 0 --class-map 0:9", "no class 9"),
    ("evaluate-bad-image", "evaluate -m {inputs}/m.onnx --yaml {inputs}/bad_image/shapes.yaml --runs 0",
     "cannot read image"),
    ("evaluate-unlabelled", "evaluate -m {inputs}/m.onnx --yaml {inputs}/data/images/val --runs 0", "no labels"),
    ("evaluate-no-model", "evaluate --yaml " + D, "-m"),
    ("evaluate-metric", "evaluate -m {inputs}/m.onnx --yaml " + D + " --metric map", "--metric"),
    ("evaluate-save-json-without-coco", "evaluate -m {inputs}/m.onnx --yaml " + D + " --save-json {out}/d.json",
     "--metric coco"),
    ("evaluate-save-json-onto-model", "evaluate -m {inputs}/m.onnx --yaml " + D +
     " --metric coco --save-json {inputs}/m.onnx", "--save-json"),
    ("evaluate-modules-broken", "evaluate -m {inputs}/demo.pt --yaml " + D + " --modules {inputs}/notes.txt",
     "notes.txt"),
    # ---- stored processing, validated like the flags it stands for (each names the metadata key's field)
    *[(f"metadata-{case}", f"evaluate -m {{inputs}}/meta_{case}.onnx --yaml " + D + " --runs 0",
       f"orinflow.processing: {next(iter(change)) if case != 'std' else 'mean/std'}")
      for case, change in BAD_METADATA.items()],
    ("metadata-channel-aligned", "evaluate -m {inputs}/meta_aligned.onnx --yaml " + D + " --runs 0",
     "orinflow.channel_aligned"),
    ("metadata-deploy", "deploy -m {inputs}/meta_iou.onnx -o {out}/b", "orinflow.processing: nms_iou"),
    ("metadata-quantize", "quantize -m {inputs}/meta_head.onnx --calib {inputs}/c.npy -o {out}/q.onnx",
     "orinflow.processing: head"),
    # ---- qat / sparsify / sparse-qat
    ("qat-onnx-model", "qat -m {inputs}/m.onnx --yaml " + D, "PyTorch model"),
    ("qat-epochs", "qat -m {inputs}/demo.pt --yaml " + D + " --epochs -1", "--epochs"),
    ("qat-init-from-fp32", "qat -m {inputs}/demo.pt --yaml " + D + " --init-from {inputs}/m.onnx -o {out}/q.onnx",
     "no Q/DQ nodes"),
    ("qat-init-from-damaged", "qat -m {inputs}/demo.pt --yaml " + D + " --init-from {inputs}/damaged.onnx "
     "-o {out}/q.onnx", "damaged.onnx"),
    ("qat-init-from-and-method", "qat -m {inputs}/demo.pt --yaml " + D + " --init-from {inputs}/m.onnx --method max",
     "--init-from is the start model"),
    ("qat-start-method", "qat -m {inputs}/demo.pt --yaml " + D + " --method best -o {out}/q.onnx", "--method"),
    ("qat-output-is-start", "qat -m {inputs}/demo.pt --yaml " + D + " --init-from {inputs}/m.onnx -o {inputs}/m.onnx",
     "overwrite the input"),
    ("qat-mode", "qat -m {inputs}/demo.pt --yaml " + D + " --mode fp8", "--mode"),
    ("qat-output-suffix", "qat -m {inputs}/demo.pt --yaml " + D + " -o {out}/q.pt", "-o"),
    ("qat-lr", "qat -m {inputs}/demo.pt --yaml " + D + " --lr 0 -o {out}/q.onnx", "--lr"),
    ("qat-lr-nan", "qat -m {inputs}/demo.pt --yaml " + D + " --lr nan -o {out}/q.onnx", "--lr must be a finite"),
    ("qat-lr-inf", "qat -m {inputs}/demo.pt --yaml " + D + " --lr inf --init-from {inputs}/m.onnx -o {out}/q.onnx",
     "--lr must be a finite"),
    ("qat-resume-nothing", "qat -m {inputs}/demo.pt --yaml " + D + " --resume -o {out}/q.onnx", "--resume"),
    ("qat-device-bad", "qat -m {inputs}/demo.pt --yaml " + D + " --device gpu0 -o {out}/q.onnx", "--device"),
    ("qat-nothing-to-train", "qat -m {inputs}/demo.pt --yaml " + D + " --no-distill -o {out}/q.onnx",
     "nothing to train on"),
    ("qat-labels-unlabelled", "qat -m {inputs}/demo.pt --yaml {inputs}/data/images/train --labels -o {out}/q.onnx",
     "label loss"),
    ("sparsify-method", "sparsify -m {inputs}/demo.pt --yaml " + D + " --method foo -o {out}/s.onnx", "--method"),
    ("sparsify-no-data", "sparsify -m {inputs}/demo.pt", "--yaml"),
    ("sparse-qat-epochs", "sparse-qat -m {inputs}/demo.pt --yaml " + D + " --qat-epochs 0", "--qat-epochs"),
    ("sparse-qat-calib-images", "sparse-qat -m {inputs}/demo.pt --yaml " + D + " --calib-images 0 -o {out}/s.onnx",
     "--calib-images"),
    # ---- deploy
    ("deploy-pytorch-model", "deploy -m {inputs}/demo.pt", "not ONNX"),
    ("deploy-trt", "deploy -m {inputs}/m.onnx --trt 9 -o {out}/b", "--trt"),
    ("deploy-workspace-negative", "deploy -m {inputs}/m.onnx --workspace-mib -5 -o {out}/b", "--workspace-mib"),
    ("deploy-workspace-zero", "deploy -m {inputs}/m.onnx --workspace-mib 0 -o {out}/b", "--workspace-mib"),
    ("deploy-opt-batch-zero", "deploy -m {inputs}/m.onnx --opt-batch 0 -o {out}/b", "--opt-batch"),
    ("deploy-overwrite-input-folder", "deploy -m {inputs}/m.onnx -o {inputs} --overwrite", "replace the input"),
    ("deploy-overwrite-foreign-folder", "deploy -m {inputs}/m.onnx -o {inputs}/bad_class --overwrite", "did not write"),
    ("deploy-overwrite-working-folder", "deploy -m {inputs}/m.onnx -o . --overwrite", "never replaces it"),
    ("deploy-output-file", "deploy -m {inputs}/m.onnx -o {inputs}/c.npy", "is a file"),
    ("deploy-missing-model", "deploy -m {inputs}/none.onnx", "none.onnx"),
    ("deploy-nms", "deploy -m {inputs}/m.onnx --nms efficient -o {out}/b", "--nms"),
    ("deploy-topk", "deploy -m {inputs}/m.onnx --pre-topk 10 --keep-topk 20 -o {out}/b", "--pre-topk"),
    # ---- export --nms / compare / custom detectors
    ("export-nms-topk", "export -m {inputs}/demo.pt --imgsz 256 --nms onnx --pre-topk 5 --keep-topk 10 "
     "-o {out}/e.onnx", "--pre-topk 5"),
    ("export-nms-flavour", "export -m {inputs}/demo.pt --imgsz 256 --nms both -o {out}/e.onnx", "--nms both"),
    ("compare-missing-model", "compare {inputs}/m.onnx {inputs}/none.onnx --yaml " + D + " -o {out}/c", "none.onnx"),
    ("compare-no-data", "compare {inputs}/m.onnx {inputs}/m.onnx -o {out}/c", "--yaml"),
    ("compare-images", "compare {inputs}/m.onnx {inputs}/m.onnx --yaml " + D + " --images 0 -o {out}/c",
     "--images"),
    ("compare-output-file", "compare {inputs}/m.onnx {inputs}/m.onnx --yaml " + D + " -o {inputs}/c.npy",
     "is a file"),
    ("export-head-without-arch", "export -m {inputs}/demo.pt --head yolov8 -o {out}/e.onnx", "--arch"),
    ("adopt-head-yolox-mismatch", "adopt -m {inputs}/m.onnx --head yolox -o {out}/a.onnx", "already carries"),
    # ---- report / inspect / sensitivity
    ("report-missing-record", "report {inputs}/none.json -o {out}/r", "none.json"),
    ("report-not-json", "report {inputs}/c.npy -o {out}/r", "c.npy"),
    ("report-output-file", "report {inputs}/m.json -o {inputs}/m.onnx", "is a file"),
    ("report-no-records", "report {inputs}/empty -o {out}/r", "no evaluation records"),
    ("inspect-json-onto-model", "inspect -m {inputs}/m.onnx --json {inputs}/m.onnx", "--json"),
    ("inspect-target", "inspect -m {inputs}/m.onnx --target bogus", "--target"),
    ("calib-cache-percentile-zero", "calib-cache -m {inputs}/m.onnx --calib {inputs}/c.npy --method percentile "
     "--percentile 0 -o {out}/c.cache", "--percentile"),
    ("calib-cache-percentile-nan", "calib-cache -m {inputs}/m.onnx --calib {inputs}/c.npy --method percentile "
     "--percentile nan -o {out}/c.cache", "--percentile"),
    ("calib-cache-percentile-other-method", "calib-cache -m {inputs}/m.onnx --calib {inputs}/c.npy --percentile 99 "
     "-o {out}/c.cache", "--method percentile"),
    ("calib-cache-from-qdq-method", "calib-cache --from-qdq {inputs}/m.onnx --method max -o {out}/c.cache",
     "--from-qdq reads"),
    ("calib-cache-from-qdq-head", "calib-cache --from-qdq {inputs}/m.onnx --no-head-protect -o {out}/c.cache",
     "--no-head-protect"),
    ("evaluate-class-map-superscript", "evaluate -m {inputs}/m.onnx --yaml " + D + " --runs 0 --class-map ²:1",
     "not model:data ids"),
    ("evaluate-class-map-arabic-digit", "evaluate -m {inputs}/m.onnx --yaml " + D + " --runs 0 --class-map ٣:1",
     "not model:data ids"),
    ("sensitivity-threads", "sensitivity -m {inputs}/m.onnx --calib {inputs}/c.npy --yaml " + D + " --threads 0",
     "--threads"),
    ("prune-flops-and-ratio", "prune -m {inputs}/demo.pt --yaml " + D + " --flops 0.5 --ratio 0.3", "give one"),
    ("sensitivity-output-file", "sensitivity -m {inputs}/m.onnx --calib {inputs}/c.npy --yaml " + D +
     " -o {inputs}/m.onnx", "is a file"),
]


@pytest.mark.parametrize("name, line, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, line, expected, inputs, tmp_path, monkeypatch):
    from tests_helpers import ASSETS

    out = tmp_path / "out"
    out.mkdir()
    if name == "quantize-onto-another-record":  # an older calibrate record sits where this model's record goes
        (out / "taken.json").write_text(json.dumps({"command": "calibrate", "output": str(out / "taken.npy")}))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(work / "workspace"))
    args = line.format(inputs=inputs, out=out, arch=f"{ASSETS / 'resnet_cifar.py'}:resnet20").split()
    before = snapshot(inputs, out, work)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{result.stderr}"
    assert lines[0].startswith("error:") and expected in lines[0], f"{name}: {lines[0]}"
    assert snapshot(inputs, out, work) == before, f"{name}: files changed"


def test_the_matrix_covers_every_command():
    commands = {c[1].split()[0] for c in CASES}
    assert len(CASES) >= 40
    assert commands >= {"export", "calibrate", "quantize", "ptq", "evaluate", "qat", "sparsify", "deploy", "report"}


# ---------------------------------------------------------------- every flag that writes a file
# How each command runs on the inputs folder; the output flag under test is appended.
BASE = {
    "adopt": "adopt -m {inputs}/foreign.onnx",
    "calib-cache": "calib-cache -m {inputs}/m.onnx --calib {inputs}/c.npy",
    "calibrate": "calibrate -m {inputs}/m.onnx --yaml " + D,
    "compare": "compare {inputs}/m.onnx {inputs}/m.onnx --yaml " + D,
    "demo": "demo --runs 0",
    "deploy": "deploy -m {inputs}/m.onnx",
    "evaluate": "evaluate -m {inputs}/m.onnx --yaml " + D + " --runs 0 --metric coco",
    "export": "export -m {inputs}/demo.pt --imgsz 256",
    "inspect": "inspect -m {inputs}/m.onnx",
    "prune": "prune -m {inputs}/demo.pt --yaml " + D + " --flops 0.5",
    "ptq": "ptq -m {inputs}/demo.pt --yaml " + D,
    "qat": "qat -m {inputs}/demo.pt --yaml " + D,
    "quantize": "quantize -m {inputs}/m.onnx --calib {inputs}/c.npy",
    "report": "report {inputs}/m.json",
    "sensitivity": "sensitivity -m {inputs}/m.onnx --calib {inputs}/c.npy --yaml " + D,
    "sparse-qat": "sparse-qat -m {inputs}/demo.pt --yaml " + D,
    "sparsify": "sparsify -m {inputs}/demo.pt --yaml " + D,
}
# Options that take a path or text but never write (inputs, names, choices): a new option must be placed here
# or marked as an output (metavar OUT.<suffix> / OUT_FOLDER), which puts it under the checks below.
READ_ONLY = {"model", "arch", "data", "split", "mean", "std", "head", "names", "modules", "calib", "method", "methods",
             "exclude", "high_precision", "mode", "targets", "target", "val_data", "val_split", "select_yaml",
             "select_split", "importance", "plan", "device", "schedule", "runtime", "metric", "coco_json", "images",
             "more", "compare", "image", "class_map", "a", "b", "sources", "trt", "nms", "calib_cache", "from_qdq", "layers", "qat_mode",
             "runtime_a", "runtime_b", "runtimes", "init_from", "int8_kernels", "select_metric",
             "kpt_shape"}


def output_options(unplaced: list | None = None) -> list[tuple[str, str, str]]:
    """(command, flag, metavar) of every option that writes a path, read from the CLI itself; `unplaced` gets
    the options that are neither outputs nor READ_ONLY."""
    import typer.main

    found, unplaced = [], unplaced if unplaced is not None else []
    for name, command in sorted(typer.main.get_command(app).commands.items()):
        for param in command.params:
            if (param.metavar or "").startswith("OUT"):
                found.append((name, param.opts[-1] if param.opts[0] == "-o" else param.opts[0], param.metavar))
            elif param.bare_type() not in ("bool", "int", "float") and param.name not in READ_ONLY:
                unplaced.append(f"{name} {param.name}")
    return found


def output_cases() -> list[tuple[str, str, str]]:
    """Each output option aimed at: an input, another command's record, a file of the wrong kind, a folder where
    a file goes (or a file where a folder goes)."""
    cases = []
    for command, flag, metavar in output_options():
        line = BASE[command] + f" {flag} "
        if metavar == "OUT_FOLDER":
            cases.append((f"{command}{flag}-onto-a-file", line + "{inputs}/c.npy", "is a file"))
            continue
        suffix = metavar.removeprefix("OUT")
        onto_input = "{inputs}/m.onnx" if suffix == ".onnx" else "{inputs}/c.npy" if suffix == ".npy" else None
        if onto_input and onto_input.split("/")[-1] in BASE[command]:
            cases.append((f"{command}{flag}-onto-an-input", line + onto_input, "would overwrite the input"))
        cases += [(f"{command}{flag}-onto-a-record", line + "{inputs}/taken" + suffix, "record of `orinflow"),
                  (f"{command}{flag}-wrong-suffix", line + "{out}/x.txt", f"must end in {suffix}"),
                  (f"{command}{flag}-onto-a-folder", line + "{inputs}/empty" + suffix, "is a folder")]
    return cases


@pytest.mark.parametrize("name, line, expected", output_cases(), ids=[c[0] for c in output_cases()])
def test_every_output_flag_refuses_inputs_records_and_the_wrong_kind(name, line, expected, inputs, tmp_path,
                                                                      monkeypatch):
    test_bad_input(name, line, expected, inputs, tmp_path, monkeypatch)


def test_the_output_checks_reach_every_command_that_writes():
    unplaced = []
    output_options(unplaced)
    assert unplaced == [], "options neither READ_ONLY nor marked as outputs (metavar OUT...)"
    commands = {command for command, _, _ in output_options()}
    assert commands == set(BASE)
    assert {"--json", "--save-json", "--workdir"} <= {flag for _, flag, _ in output_options()}
