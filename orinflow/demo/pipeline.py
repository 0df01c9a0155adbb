"""`orinflow demo`: every stage that exists, on the embedded detector and its generated data."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rich.console import Console

from . import shapes
from ..data import load_dataset
from ..evaluate import EvalOptions, evaluate_model
from ..evaluate.table import comparison_table
from ..io import write_json
from ..models import load_model
from ..optimize.quantize.ptq import QuantizeSpec
from ..optimize.quantize.qat import run_qat
from ..optimize.quantize.route import run_ptq
from ..optimize.quantize.sensitivity import BudgetSpec, SensitivityOptions, cache_dir, fit_budget
from ..optimize.train.config import QATConfig
from ..report import write_report
from ..report.sensitivity import write_sensitivity

DEMO_MODEL = Path(__file__).parent / "assets" / "shapes_yolov8p.pt"
CALIB_IMAGES = 64
DEMO_BUDGET = BudgetSpec(max_drop=0.3, max_fallback=0.10, max_steps=6)
DEMO_SELECTION = SensitivityOptions(select_images=200, top=2)
# lr chosen on the train split after the 20 steps (measured plan, foreground distillation): 1e-3 0.883,
# 3e-4 0.969, 1e-4 0.980 (0.977 refitted, before fine-tuning)
PRUNE_DEMO = {"flops": 0.7, "round_to": 8, "epochs": 1, "max_steps": 20, "batch": 16, "lr": 1e-4}
QAT_DEMO = QATConfig(epochs=1, batch=16, lr=1e-5, calib_images=CALIB_IMAGES, max_steps=10)  # a taste: ~15 s


def run_demo(workdir: Path, runs: int, console: Console) -> list[dict]:
    started = time.perf_counter()
    console.rule("orinflow demo: embedded shapes detector (YOLOv8-pico, 3 classes, 256 px)")
    data_yaml = shapes.generate(workdir / "shapes")
    console.print(f"data: {data_yaml} (generated from the committed recipe, seed {shapes.RECIPE_SEED}); "
                  "calibrate on 'train', evaluate on the held-out 'val' (100 images)")
    options = EvalOptions(latency_runs=runs, batch=8)
    adapter = load_model(DEMO_MODEL, imgsz=shapes.IMAGE_SIZE)
    torch_record = evaluate_model(adapter, data_yaml, "val", options)

    console.print("route 1 (PTQ): export → calibrate → INT8 for TensorRT (ModelOpt) and for CPU (ONNX Runtime)")
    route = run_ptq(adapter, data_yaml, "train", data_yaml, "val", workdir / "ptq", ["entropy"],
                    ["tensorrt", "cpu"], QuantizeSpec(), CALIB_IMAGES, options, say=lambda m: console.print(f"  {m}"))
    budgeted = _budgeted_ptq(route, data_yaml, workdir, options, console)
    on_openvino = _openvino_rows(route, data_yaml, options, console)
    console.print(f"route 2 (QAT): from the budgeted route-1 model (its scales and float groups), "
                  f"{QAT_DEMO.max_steps} distillation steps from the FP32 model; the start and the epoch scored on "
                  "'train', the better one written")
    train_set = load_dataset(data_yaml, "train")
    qat = run_qat(adapter, train_set, QAT_DEMO, workdir / "qat" / "shapes_yolov8p_qat_int8.onnx",
                  Path(budgeted["model"]), say=lambda m: console.print(f"  {m}"), selection=train_set)
    qat_record = evaluate_model(load_model(qat["model"]), data_yaml, "val", options)
    pruned = _pruned_ptq(data_yaml, workdir, options, console)
    records = [torch_record, route["fp32"], *route["variants"], budgeted, *on_openvino, qat_record, *pruned]
    for record in records:
        write_json(workdir / "records" / f"eval_{Path(record['model']).stem}.json", record)
    console.print(comparison_table(records, title="demo: shapes val (deltas against PyTorch FP32)"))
    if any("static batch" in note for r in records for note in r.get("notes", [])):
        console.print("The exported graphs have a static batch of 1: their batch-8 latency is left out (it would be "
                      "8 batch-1 runs); export with --dynamic to time real batches.")
    console.print("The tensorrt-target model is built for TensorRT's INT8 kernels: on this CPU it runs through "
                  "ONNX Runtime's reference Q/DQ path, so judge its accuracy here, its speed on the Jetson.")
    bundle = workdir / "deploy" / Path(route["best"]["tensorrt"]["model"]).stem
    from ..api import deploy

    deployed = deploy(route["best"]["tensorrt"]["model"], output=bundle, overwrite=True)
    console.print(f"Jetson bundle (build_engine.sh, bench.sh, infer.py; {deployed['nms']['flavour']} NMS inside "
                  f"the engine): {bundle}")
    _implicit_bundle(route, data_yaml, workdir, console)
    from ..api import compare

    aligned = compare(route["fp32"]["model"], route["best"]["tensorrt"]["model"], data_yaml, images=16,
                      output=workdir / "compare", say=lambda m: None)
    worst = (f"the error grows most at {aligned['worst_layers'][0]['tensor']} "
             f"(+{100 * aligned['worst_layers'][0]['growth']:.2f}% noise)" if aligned["worst_layers"] else "no layer "
             "adds noise")
    console.print(f"compare FP32 vs INT8 (16 val images): {aligned['paired_layers']} layers paired; {worst}; "
                  f"detections matched {aligned['detections']['matched']} of {aligned['detections']['a']}")
    written = write_report([workdir / "records", workdir / "compare"], workdir / "report")
    console.print(f"report: {written['markdown']} and {written['html']}")
    console.print(f"records in {workdir / 'records'}; total {time.perf_counter() - started:.0f} s")
    return records


def _openvino_rows(route: dict, data_yaml: Path, options: EvalOptions, console: Console) -> list[dict]:
    """FP32 and the TensorRT-target INT8 model on OpenVINO (x86 CPUs), beside their ONNX Runtime rows."""
    from dataclasses import replace

    on_openvino = replace(options, runtime="openvino")
    records = [evaluate_model(load_model(route[key]["model"] if key == "fp32" else route["best"]["tensorrt"]["model"]),
                              data_yaml, "val", on_openvino) for key in ("fp32", "best")]
    emulated = next((note for note in records[1].get("notes", []) if note.startswith("OpenVINO")), None)
    console.print("OpenVINO (x86 CPUs) runs the same FP32 and TensorRT-target INT8 ONNX"
                  + (f"; {emulated}" if emulated else ""), highlight=False, soft_wrap=True)
    return records


def _pruned_ptq(data_yaml: Path, workdir: Path, options: EvalOptions, console: Console) -> list[dict]:
    """Route 5 briefly (30% fewer FLOPs, a few distillation steps on 'train'), then route 1 on the result."""
    from ..api import prune

    console.print(f"route 5 (prune): to {PRUNE_DEMO['flops']} of the FLOPs (channels in multiples of "
                  f"{PRUNE_DEMO['round_to']}), {PRUNE_DEMO['max_steps']} distillation steps, then route 1 on it")
    made = prune(DEMO_MODEL, data_yaml, imgsz=shapes.IMAGE_SIZE, output=workdir / "prune" / "shapes_yolov8p_pruned.pt",
                 runs=options.latency_runs, say=lambda m: console.print(f"  {m}"), **PRUNE_DEMO)
    timed = made.get("onnx")
    if timed:
        console.print(f"  {made['flops_share']:.3f} of the FLOPs, {made['after']['params']:,} of "
                      f"{made['before']['params']:,} params; ONNX Runtime batch 1 on {timed['cpu']}: "
                      f"x{timed['latency_ratio']:.2f} of the original's latency, timed in turn")
    pruned = load_model(made["model"], imgsz=shapes.IMAGE_SIZE)
    route = run_ptq(pruned, data_yaml, "train", data_yaml, "val", workdir / "prune" / "ptq", ["entropy"],
                    ["tensorrt"], QuantizeSpec(), CALIB_IMAGES, options, say=lambda m: console.print(f"  {m}"))
    return [route["fp32"], *route["variants"]]


def _budgeted_ptq(route: dict, data_yaml: Path, workdir: Path, options: EvalOptions, console: Console) -> dict:
    """TensorRT-target INT8 under a 0.3-point budget, selected on 'train' and evaluated on the held-out 'val'."""
    console.print(f"accuracy budget: sensitivity per quantization group, then fall back groups until mAP50-95 on "
                  f"'train' drops at most {DEMO_BUDGET.max_drop} points (max method, tensorrt target)")
    fp32 = load_model(route["fp32"]["model"])
    calib = np.load(workdir / "ptq" / "calib.npy")
    select = load_dataset(data_yaml, "train")
    spec = QuantizeSpec(method="max")
    out = workdir / "budget" / "shapes_yolov8p_int8_max_tensorrt_budget.onnx"
    made = fit_budget(fp32, calib, spec, select, DEMO_BUDGET, out, DEMO_SELECTION,
                      say=lambda m: console.print(f"  {m.strip()}"))
    study = json.loads((cache_dir() / f"{made['budget']['sensitivity_key']}.json").read_text())
    write_sensitivity(study, workdir / "records" / "sensitivity")
    b = made["budget"]
    console.print(f"  budget {'met' if b['met'] else 'NOT met'} on the selection split: {b['metric']} FP32 "
                  f"{b['fp32']:.4f}, full INT8 {b['full_int8']:.4f}, budgeted {b['final']:.4f}; "
                  f"{len(b['fallback'])} group(s) in float, INT8 FLOP share {b['int8_flop_share']:.1%}")
    record = evaluate_model(load_model(out), data_yaml, "val", options)
    record.update(route="ptq", quantization=made["quantization"], qdq_report=made["qdq_report"], budget=b)
    return record


def _implicit_bundle(route: dict, data_yaml: Path, workdir: Path, console: Console) -> None:
    """Beside the explicit bundle: the FP32 export with a TensorRT calibration cache measured (entropy) on the
    demo's calibration set (implicit INT8, as JetPack 5, DLA and DeepStream take it), with nvinfer's config; the
    cache emulated on training images first (what its ranges cost, shown)."""
    from ..api import calib_cache, deploy
    from ..optimize.quantize.cache_emulation import describe

    cache = calib_cache(route["fp32"]["model"], calib=workdir / "ptq" / "calib.npy", data=data_yaml, split="train",
                        method="entropy", output=workdir / "deploy" / "shapes_entropy.cache", say=lambda m: None)
    bundle = workdir / "deploy" / "implicit"
    deploy(route["fp32"]["model"], output=bundle, implicit=True, calib_cache=cache["output"], deepstream=True,
           overwrite=True, say=lambda m: None)
    console.print(f"implicit-INT8 bundle (FP32 ONNX + calib.cache: {cache['tensors']} activations, entropy, "
                  f"emulated on {cache['emulated']['images']} training images: {describe(cache['emulated'])}; "
                  f"DeepStream config): {bundle}")
