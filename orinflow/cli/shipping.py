"""Inspecting and shipping: inspect, deploy, report, and the offline demo."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DYNAMIC_DEFAULT_BATCH
from .app import KeepTopkOpt, NmsConfOpt, NmsIouOpt, PreTopkOpt, VerboseOpt, app, cli_errors, console
from .quantization import print_qdq


# ---------------------------------------------------------------- inspect
@app.command()
@cli_errors
def inspect(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model to inspect.")],
    target: Annotated[str, typer.Option("--target", help="Lint Q/DQ for this target (tensorrt or cpu).")]
    = "tensorrt",
    layers: Annotated[bool, typer.Option("--layers", help="Print every conv/GEMM layer.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the inspection record here.")] = None,
    verbose: VerboseOpt = False,
):
    """Q/DQ report and 2:4 sparsity check (TensorRT's rule, per conv/GEMM) of an ONNX model."""
    from rich.table import Table

    from .. import api
    from ..optimize.common.sparse24 import describe

    record = api.inspect(model, target=target, json=json_out, say=console.print)
    if "qdq_report" in record:
        print_qdq(record["qdq_report"])
    else:
        console.print("no Q/DQ nodes: a floating-point model")
    sparsity = record["sparsity"]
    console.print(describe(sparsity))
    if layers:
        table = Table(title="conv/GEMM layers")
        for column in ("node", "op", "reduction dim", "eligible", "2:4", "MFLOPs"):
            table.add_column(column, justify="left" if column in ("node", "op") else "right")
        for layer in sparsity["layers"]:
            table.add_row(layer["node"], layer["op"], str(layer["reduction_dim"] or "-"), str(layer["eligible"]),
                          str(layer["is_2to4"]), f"{layer['flops'] / 1e6:.1f}")
        console.print(table)


# ---------------------------------------------------------------- deploy / report
@app.command()
@cli_errors
def deploy(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model to deploy (FP32/FP16, Q/DQ, 2:4).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Bundle folder (default: "
                                                   "workspace/deploy/<model>).")] = None,
    trt: Annotated[str, typer.Option("--trt", help="TensorRT on the device: 10 (JetPack 6, --stronglyTyped for "
                                     "Q/DQ) or 8 (JetPack 5, --int8 --fp16).")] = "10",
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Floating-point models: build with FP16 kernels "
                                       "allowed.")] = True,
    min_batch: Annotated[int, typer.Option("--min-batch", help="Dynamic-batch models: smallest batch.")] = 1,
    opt_batch: Annotated[Optional[int], typer.Option("--opt-batch", help="Dynamic-batch models: batch TensorRT "
                                                     f"tunes for (default {DYNAMIC_DEFAULT_BATCH}).")] = None,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="Dynamic-batch models: largest batch "
                                                     "(default: --opt-batch).")] = None,
    workspace_mib: Annotated[Optional[int], typer.Option("--workspace-mib", help="TensorRT builder workspace "
                                                         "(default: TensorRT's).")] = None,
    nms: Annotated[str, typer.Option("--nms", help="A detector without NMS inside is deployed end-to-end: trt "
                                     "(EfficientNMS_TRT; model_raw.onnx kept for ONNX Runtime), onnx "
                                     "(NonMaxSuppression) or none.")] = "trt",
    pre_topk: PreTopkOpt = 30000, keep_topk: KeepTopkOpt = 300, iou: NmsIouOpt = None, conf: NmsConfOpt = 0.25,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
    verbose: VerboseOpt = False,
):
    """Jetson bundle: the ONNX, build_engine.sh (trtexec flags read from the model), bench.sh, infer.py, README."""
    from .. import api

    record = api.deploy(model, output=output, trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                        max_batch=max_batch, workspace_mib=workspace_mib, nms=nms, pre_topk=pre_topk,
                        keep_topk=keep_topk, iou=iou, conf=conf, overwrite=overwrite,
                        say=console.print)
    console.print(f"bundle [bold]{record['bundle']}[/bold]: {len(record['build_engine'])} trtexec arguments")
    if "nms" in record:
        console.print(f"end-to-end: {record['nms']['flavour']} NMS inside the engine (keep-topk "
                      f"{record['nms']['keep_topk']}, IoU {record['nms']['iou']}, conf {record['nms']['conf']})")
    if not record["traits"]["has_processing"]:
        console.print("[yellow]warning:[/yellow] the model carries no orinflow metadata, so the bundle's infer.py "
                      "cannot know its pre/post-processing (build_engine.sh and bench.sh work)")
    console.print(" ".join(record["build_engine"]), highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def report(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Run records (.json) or folders searched for them "
                                                            "(default: the workspace).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Report folder (default: "
                                                   "workspace/report).")] = None,
    verbose: VerboseOpt = False,
):
    """report.md and a self-contained report.html: every evaluated variant side by side, with plots."""
    from .. import api

    written = api.report(sources, output=output)
    console.print(f"report of {written['rows']} models: [bold]{written['markdown']}[/bold] and "
                  f"[bold]{written['html']}[/bold]")


# ---------------------------------------------------------------- demo
@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes its data and models.")] = Path(
        "workspace/demo"),
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs per model.")] = 30,
    verbose: VerboseOpt = False,
):
    """Offline run on the embedded shapes detector: export, PTQ for TensorRT and CPU, a short QAT, compare, then a Jetson bundle and the report."""
    from ..demo.pipeline import run_demo

    run_demo(workdir, runs, console)
