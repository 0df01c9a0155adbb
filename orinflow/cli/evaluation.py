"""Measuring: evaluate (one model or several side by side) and compare (two, layer by layer)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from ..errors import OrinflowError
from .app import (ArchOpt, CropOpt, DataOpt, ImgszOpt, Int8KernelsOpt, LayoutOpt, MeanOpt, ModulesOpt, NamesOpt,
                  SplitOpt, StdOpt, VerboseOpt, app, cli_errors, console, esc, say)
from ..tasks import task_room


# ---------------------------------------------------------------- evaluate
class CompareSwitch(TyperCommand):
    """`--compare` with no model after it is the original design's switch: --compare-workspace."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, token in enumerate(args):
            if token == "--compare" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = "--compare-workspace"
        return super().parse_args(ctx, args)


@app.command(cls=CompareSwitch)
@cli_errors
def evaluate(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model to evaluate (any format -m takes).")] = None,
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="Models to compare on the same data: "
                                                         "--compare A B C (the first is the baseline).")] = None,
    more: Annotated[Optional[list[str]], typer.Argument(help="Further models after --compare A.", show_default=False,
                                                        metavar="[MODELS]...")] = None,
    compare_workspace: Annotated[bool, typer.Option("--compare-workspace", help="Evaluate -m's checkpoint beside "
                                                    "every ONNX of that name in the workspace (-m takes a name such "
                                                    "as yolo26n); `--compare` alone means this too.")] = False,
    data: DataOpt = None,
    split: SplitOpt = "val",
    conf: Annotated[float, typer.Option("--conf", help="Detection score threshold.")] = 0.001,
    iou: Annotated[Optional[float], typer.Option("--iou", help="NMS IoU (default: the family's usual, 0.6 YOLOv5, "
                                                 "0.7 Ultralytics).")] = None,
    max_det: Annotated[int, typer.Option("--max-det", help="Detections kept per image.")] = 300,
    batch: Annotated[int, typer.Option("--batch", help="Batch for accuracy and the second latency figure.")] = 1,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs at batch 1 (0 skips latency).")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs.")] = 5,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="auto (PyTorch for .pt, ONNX Runtime CPU for .onnx), "
                                         "onnxruntime, openvino (ONNX on an x86 CPU), or tensorrt (ONNX or .engine; "
                                         "needs the tensorrt package and a GPU).")] = "auto",
    int8_kernels: Int8KernelsOpt = "auto",
    per_class: Annotated[bool, typer.Option("--per-class", help="Print the per-class table (detection).")] = False,
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images", help="Leave out images that cannot be "
                                                  "read (each is named, counted and recorded) instead of "
                                                  "stopping.")] = False,
    metric: Annotated[str, typer.Option("--metric", help="yolov5: YOLOv5/Ultralytics-style mAP (val.py's); coco: "
                                        "also the COCO evaluation's AP/AP50/AP75/APs/APm/APl/AR (faster-coco-eval)."
                                        )] = "yolov5",
    save_json: Annotated[Optional[Path], typer.Option("--save-json", metavar="OUT.json",
                                                      help="With --metric coco: write the "
                                                      "detections in COCO result format here.")] = None,
    coco_json: Annotated[Optional[Path], typer.Option("--coco-json", help="A COCO instances JSON as the evaluation "
                                                      "data (with --images), instead of --yaml.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="The folder of --coco-json's images.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="OUT.json",
                                                     help="Write the run record(s) here.")] = None,
    class_map: Annotated[Optional[str], typer.Option("--class-map", help="A detector whose classes are not the "
                                                     "data's: 'names' pairs equal names, '0:2,1:5' pairs model:data "
                                                     "ids; other model classes are not scored.")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Accuracy (mAP50/mAP50-95 or top-1/top-5), latency, size: one model or a side-by-side comparison."""
    from .. import api
    from ..evaluate.table import coco_table, comparison_table, per_class_table

    if compare_workspace:
        if not model or compare:
            raise OrinflowError("--compare alone compares -m NAME's checkpoint with its ONNX files: give -m NAME")
        found = api.named_models(model)
        console.print(f"found for {model}: " + ", ".join(str(p) for p in found), highlight=False, soft_wrap=True)
        model = str(found[0])
        compare = [str(p) for p in found[1:]]
    paths = ([model] if model else []) + _split_list(compare or []) + list(more or [])
    if more and not compare:
        raise OrinflowError(f"unexpected argument {more[0]!r}; compare models with --compare A B ...")
    if not paths:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    records = api.evaluate_many(paths, data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                          warmup=warmup, threads=threads, runtime=runtime, int8_kernels=int8_kernels,
                          skip_bad_images=skip_bad_images,
                          metric=metric, save_json=save_json, coco_json=coco_json, images=images, json=json_out,
                          class_map=class_map, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop,
                          modules=modules, head=head, names=names,
                          say=say)
    console.print(comparison_table(records))
    if metric == "coco":
        console.print(coco_table(records))
    print_notes(records)
    if per_class and task_room(records[0]["task"]).instances:
        for record in records:
            console.print(per_class_table(record))
    if json_out:
        console.print(f"run record: {json_out}")


# ---------------------------------------------------------------- compare (alignment debugger)
@app.command("compare")
@cli_errors
def compare_command(
    a: Annotated[str, typer.Argument(help="Model A (the reference): checkpoint, ONNX (FP32, FP16, Q/DQ, "
                                     "end-to-end) or engine.", show_default=False)],
    b: Annotated[str, typer.Argument(help="Model B, compared with A.", show_default=False)],
    data: DataOpt = None,
    split: SplitOpt = "val",
    images: Annotated[int, typer.Option("--images", help="Images drawn (seeded) from the data.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw.")] = 0,
    conf: Annotated[float, typer.Option("--conf", help="Score threshold of the detections matched.")] = 0.25,
    top: Annotated[int, typer.Option("--top", help="Layers listed where the error grows most.")] = 5,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT_FOLDER",
                                                   help="Folder for compare.json and compare.png "
                                                   "(default: workspace/compare/<A>_vs_<B>).")] = None,
    runtime_a: Annotated[str, typer.Option("--runtime-a", help="What runs an ONNX model A: auto (ONNX Runtime) or "
                                           "openvino.")] = "auto",
    runtime_b: Annotated[str, typer.Option("--runtime-b", help="What runs an ONNX model B (one model on two "
                                           "runtimes: compare m.onnx m.onnx --runtime-b openvino).")] = "auto",
    int8_kernels: Int8KernelsOpt = "auto",
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Where two forms of a model part: layer by layer (cosine, SQNR, max error) and detection by detection."""
    from .. import api
    from ..evaluate.compare_report import compare_tables

    record = api.compare(a, b, data, split=split, images=images, seed=seed, conf=conf, top=top, output=output,
                         runtime_a=runtime_a, runtime_b=runtime_b, int8_kernels=int8_kernels,
                         arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                         names=names, say=say)
    for table in compare_tables(record):
        console.print(table)
    for key in (record["mAP"] or {}).get("a", {}):
        console.print(f"{key} on these images: A {record['mAP']['a'][key]:.4f}, B {record['mAP']['b'][key]:.4f}")
    for note in record["notes"]:
        console.print(f"[yellow]note:[/yellow] {esc(note)}", markup=True, highlight=False, soft_wrap=True)
    console.print(f"record {record['files']['json']}, plot {record['files']['plot']}")


def print_notes(records: list[dict]) -> None:
    """What an evaluation record says about itself (skipped images, a batch it could not run)."""
    for record in records:
        for note in record.get("notes", []):
            console.print(f"[yellow]note:[/yellow] {esc(note)}", markup=True, highlight=False, soft_wrap=True)


def _split_list(values: list[str]) -> list[str]:
    """--compare a.onnx,b.onnx and repeated --compare both work."""
    from ..api import names_list

    return names_list(values)
