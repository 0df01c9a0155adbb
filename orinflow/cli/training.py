"""The training routes: qat, sparsify, sparse-qat and prune."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import (ArchOpt, CropOpt, DataOpt, ImgszOpt, LayoutOpt, MeanOpt, ModelOpt, ModulesOpt, NamesOpt, SplitOpt,
                  StdOpt, VerboseOpt, app, cli_errors, console, esc, say)
from .evaluation import print_notes
from .quantization import SelectImagesOpt, SelectSplitOpt, SelectYamlOpt, print_qdq


# ---------------------------------------------------------------- training routes (2, 3, 4)
ValYamlOpt = Annotated[Optional[str], typer.Option("--val-yaml", help="Separate evaluation dataset YAML "
                                                   "(default: --yaml).")]
ValSplitOpt = Annotated[str, typer.Option("--val-split", help="Split evaluated before/after.")]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Training batch size.")]
CalibImagesOpt = Annotated[int, typer.Option("--calib-images", help="Images that calibrate the quantizers (and "
                                             "feed SparseGPT).")]
DistillOpt = Annotated[bool, typer.Option("--distill/--no-distill", help="Distil from the FP32 model on the raw "
                                          "head outputs (works without labels, any family).")]
LabelsOpt = Annotated[Optional[bool], typer.Option("--labels/--no-labels", help="Add the family's own label loss "
                                                   "(cross-entropy; Ultralytics' or YOLOv5's detection loss). Default: "
                                                   "on for classifiers, off for detectors.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N. Several GPUs: launch with "
                                        "`torchrun --nproc_per_node N -m orinflow.cli ...` and --device cuda.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Cap on steps per epoch.")]
FlipOpt = Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror a random half of each batch (teacher, "
                                       "student and labels alike).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from the checkpoint "
                                         "saved after each epoch (<output>.qat.pt / .sat.pt).")]
InitFromOpt = Annotated[Optional[str], typer.Option("--init-from", metavar="MODEL_INT8.onnx", help="Start from "
                                                    "this Q/DQ model (route 1's best, tensorrt target): its scales, "
                                                    "float groups and Q/DQ placement are kept.")]
AllowPartialOpt = Annotated[bool, typer.Option("--allow-partial", help="With --init-from: calibrate afresh what "
                                               "does not pair (instead of refusing).")]
QatSelectYamlOpt = Annotated[Optional[str], typer.Option("--select-yaml", help="Labelled data that scores the start "
                                                         "and every epoch; the best is written (default: --yaml). "
                                                         "Never the data you claim figures on.")]
SparseMethodOpt = Annotated[str, typer.Option("--method", help="2:4 mask: magnitude, or sparsegpt (weights "
                                              "rebuilt from --calib-images' activations).")]
SparseFlopsOpt = Annotated[Optional[float], typer.Option("--sparse-flops", help="Share of the conv FLOPs to make "
                                                         "2:4, the layers that lose least per FLOP first (measured "
                                                         "on the training images; default: every eligible layer).")]


def _print_comparison(records: list[dict], title: str) -> None:
    from ..evaluate.table import comparison_table

    console.print(comparison_table(records, title=title))
    print_notes(records)


@app.command()
@cli_errors
def qat(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    mode: Annotated[str, typer.Option("--mode", help="Quantization mode (int8).")] = "int8",
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs (0: the start, as QAT exports it).")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    init_from: InitFromOpt = None,
    allow_partial: AllowPartialOpt = False,
    method: Annotated[Optional[str], typer.Option("--method", help="Without --init-from: the calibration of the "
                                                  "route-1 start (entropy, max, percentile, search; default "
                                                  "search).")] = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Without --init-from: the start keeps "
                                                      "the main metric on --select-yaml within this many points "
                                                      "(quantize --max-drop).")] = None,
    select_yaml: QatSelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 200,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs in the comparison (0 skips).")] = 20,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx",
                                                   help="Output Q/DQ .onnx (default: "
                                                   "workspace/qat/<model>/<model>_qat_int8.onnx).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 2: quantization-aware fine-tuning with ModelOpt from route 1's model (--init-from, or made first),
    never written below it on the selection data; exported as Q/DQ ONNX, compared with FP32."""
    from .. import api

    record = api.qat(model, data, split=split, val_data=val_data, val_split=val_split, mode=mode, epochs=epochs,
                     lr=lr, batch=batch, calib_images=calib_images, init_from=init_from, allow_partial=allow_partial,
                     method=method, max_drop=max_drop, select_yaml=select_yaml, select_split=select_split,
                     select_images=select_images, distill=distill, labels=labels, device=device,
                     max_steps=max_steps, flip=flip, resume=resume, runs=runs, output=output, arch=arch, imgsz=imgsz,
                     mean=mean, std=std, crop=crop,
                     modules=modules, head=head, names=names, say=say)
    if "compare" in record:
        console.print(f"QAT model [bold]{esc(record['model'])}[/bold] in {record['seconds']} s", markup=True)
        print_qdq(record["qdq_report"])
        _print_comparison(record["compare"], "route 2: QAT")


@app.command()
@cli_errors
def sparsify(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    sparse_flops: SparseFlopsOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Sparsity-aware fine-tuning epochs (0: masks only).")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx",
                                                   help="Output 2:4-sparse FP32 .onnx (default: "
                                                   "workspace/sat/<model>/<model>_sparse24.onnx).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 3: 2:4 sparsity + sparsity-aware fine-tuning; writes a sparse FP32 ONNX for `ptq` and the sparse
    checkpoint."""
    from .. import api
    from ..optimize.common.sparse24 import describe

    record = api.sparsify(model, data, split=split, val_data=val_data, val_split=val_split, method=method,
                          sparse_flops=sparse_flops, epochs=epochs, lr=lr, batch=batch, calib_images=calib_images,
                          distill=distill, labels=labels,
                          device=device, max_steps=max_steps, flip=flip, resume=resume, output=output, arch=arch,
                          imgsz=imgsz, mean=mean, std=std, crop=crop,
                          modules=modules, head=head, names=names, say=say)
    if "compare" in record:
        console.print(f"sparse model [bold]{esc(record['model'])}[/bold]; {esc(describe(record['sparsity']))}",
                      markup=True)
        _print_comparison(record["compare"], "route 3: 2:4 sparsity (then `orinflow ptq -m` the sparse ONNX)")


@app.command("sparse-qat")
@cli_errors
def sparse_qat(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    sparse_flops: SparseFlopsOpt = None,
    sat_epochs: Annotated[int, typer.Option("--sat-epochs", help="Sparsity-aware fine-tuning epochs.")] = 1,
    qat_epochs: Annotated[int, typer.Option("--qat-epochs", help="QAT epochs, 2:4 masks held.")] = 1,
    qat_mode: Annotated[str, typer.Option("--qat-mode", help="Quantization of the QAT stage (int8).")] = "int8",
    lr: LrOpt = 1e-4,
    qat_lr: Annotated[Optional[float], typer.Option("--qat-lr", help="QAT learning rate (default: --lr).")] = None,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    init_from: InitFromOpt = None,
    allow_partial: AllowPartialOpt = False,
    select_yaml: QatSelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 200,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs in the comparison (0 skips).")] = 20,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx",
                                                   help="Output Q/DQ + 2:4 .onnx (default: "
                                                   "workspace/sparse_qat/<model>/<model>_sparse24_qat_int8.onnx).")]
    = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 4: SAT then QAT with the 2:4 masks kept, exported as Q/DQ + 2:4 ONNX, compared with FP32."""
    from .. import api
    from ..optimize.common.sparse24 import describe

    record = api.sparse_qat(model, data, split=split, val_data=val_data, val_split=val_split, method=method,
                            sparse_flops=sparse_flops, sat_epochs=sat_epochs, qat_epochs=qat_epochs,
                            qat_mode=qat_mode, lr=lr, qat_lr=qat_lr, batch=batch,
                            calib_images=calib_images, init_from=init_from, allow_partial=allow_partial,
                            select_yaml=select_yaml, select_split=select_split, select_images=select_images,
                            distill=distill, labels=labels, device=device,
                            max_steps=max_steps, flip=flip, resume=resume, runs=runs, output=output, arch=arch,
                            imgsz=imgsz, mean=mean, std=std, crop=crop,
                            modules=modules, head=head, names=names, say=say)
    if "compare" in record:
        console.print(f"sparse INT8 model [bold]{esc(record['model'])}[/bold] in {record['seconds']} s; "
                      f"{esc(describe(record['sparsity']))}", markup=True)
        print_qdq(record["qdq_report"])
        _print_comparison(record["compare"], "route 4: SAT + QAT")


# ---------------------------------------------------------------- route 5: prune
@app.command()
@cli_errors
def prune(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    flops: Annotated[Optional[float], typer.Option("--flops", help="Target share of the original conv/linear FLOPs "
                                                   "(default 0.7: 30% fewer).")] = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", help="Instead of --flops: prune this share of every "
                                                   "prunable layer's channels.")] = None,
    importance: Annotated[str, typer.Option("--importance", help="Channel ranking: l1, l2, bn, taylor, "
                                            "lamp.")] = "l1",
    round_to: Annotated[int, typer.Option("--round-to", help="Channel counts kept as multiples of this (32: "
                                          "TensorRT's INT8 vector width; 8 suits FP16).")] = 32,
    steps: Annotated[int, typer.Option("--steps", help="Prune in this many steps, fine-tuning after each.")] = 1,
    min_share: Annotated[float, typer.Option("--min-share", help="Share of its channels every layer "
                                             "keeps.")] = 0.25,
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct", help="Refit the layers that lost "
                                              "input channels by least squares on 64 --yaml images (without: "
                                              "re-estimate BatchNorm only).")] = True,
    plan: Annotated[str, typer.Option("--plan", help="Share of the cut per channel group: measured (first the "
                                      "groups whose cuts add the least distillation loss per FLOP, each measured "
                                      "on 8 --yaml images; without --yaml: even), or even (the same share from "
                                      "every group).")] = "measured",
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs after each step (0: prune "
                                        "only).")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Undo the step that drops the selection "
                                                      "score (mAP50-95 or top-1) more than this, and stop.")] = None,
    select_yaml: SelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 200,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print channels, params and FLOPs per layer before "
                                          "and after; write nothing.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed ONNX Runtime runs of both models, side by side (0 "
                                      "skips).")] = 20,
    flip: FlipOpt = False,
    mixup: Annotated[bool, typer.Option("--mixup/--no-mixup", help="Blend each image with another of its batch "
                                        "(a uniform share; the labels of both count).")] = False,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning rate: constant, or cosine (decays to 0 "
                                          "over the run).")] = "constant",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fine-tuning's image order and "
                                      "augmentation.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.pt",
                                                   help="Output checkpoint (default: "
                                                   "workspace/prune/<model>/<model>_pruned.pt).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 5: dependency-aware channel pruning with fine-tuning; writes a checkpoint of the same family."""
    from .. import api

    record = api.prune(model, data, split=split, flops=flops, ratio=ratio, importance=importance,
                       round_to=round_to, steps=steps, min_share=min_share, reconstruct=reconstruct, plan=plan,
                       epochs=epochs, lr=lr, batch=batch, distill=distill, labels=labels, max_drop=max_drop,
                       select_yaml=select_yaml, select_split=select_split, select_images=select_images,
                       device=device, max_steps=max_steps, dry_run=dry_run, runs=runs, flip=flip, mixup=mixup,
                       schedule=schedule, seed=seed,
                       output=output, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules,
                       head=head, names=names, say=say)
    _print_prune(record)


def _print_prune(record: dict) -> None:
    from rich.table import Table

    if record.get("dry_run"):
        table = Table("layer", "channels", "MFLOPs", title="dry run: nothing written")
        for row in record["layers"]:
            changed = row["channels_after"] != row["channels_before"]
            table.add_row(row["layer"], f"{row['channels_before']} -> {row['channels_after']}" if changed
                          else str(row["channels_before"]),
                          f"{2 * row['macs_before'] / 1e6:.1f} -> {2 * (row['macs_after'] or 0) / 1e6:.1f}")
        console.print(table)
    before, after = record["before"], record["after"]
    console.print(f"params {before['params']:,} -> {after['params']:,}; GFLOPs {before['gflops']} -> "
                  f"{after['gflops']} ({after['macs'] / before['macs']:.3f} of the original)")
    if "onnx" in record:
        onnx_ = record["onnx"]
        console.print(f"ONNX Runtime CPU batch 1 ({onnx_['cpu']}): {onnx_['latency_ms']['original']['median']:.2f} -> "
                      f"{onnx_['latency_ms']['pruned']['median']:.2f} ms (x{onnx_['latency_ratio']:.3f}, timed in "
                      f"turn); ONNX {onnx_['size_bytes']['original'] / 1e6:.2f} -> "
                      f"{onnx_['size_bytes']['pruned'] / 1e6:.2f} MB")
    if not record.get("dry_run"):
        console.print(f"pruned model [bold]{esc(record['model'])}[/bold] in {record['seconds']} s", markup=True)
