"""Inspecting and shipping: inspect, deploy, report, and the offline demo."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DYNAMIC_DEFAULT_BATCH
from .app import KeepTopkOpt, NmsConfOpt, NmsIouOpt, PreTopkOpt, VerboseOpt, app, cli_errors, console, esc, say
from .quantization import print_qdq


# ---------------------------------------------------------------- inspect
@app.command()
@cli_errors
def inspect(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model (or TensorRT calibration cache) to inspect.")],
    target: Annotated[str, typer.Option("--target", help="Lint Q/DQ for this target (tensorrt or cpu).")]
    = "tensorrt",
    calib_cache: Annotated[Optional[str], typer.Option("--calib-cache", help="A TensorRT calibration cache to "
                                                       "check against the model's activations.")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="Print every conv/GEMM layer.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="OUT.json",
                                                     help="Write the inspection record here.")] = None,
    verbose: VerboseOpt = False,
):
    """Q/DQ report and 2:4 sparsity check (TensorRT's rule, per conv/GEMM) of an ONNX model, or a calibration cache."""
    from rich.table import Table

    from .. import api
    from ..optimize.common.sparse24 import describe

    record = api.inspect(model, target=target, calib_cache=calib_cache, json=json_out, say=say)
    if "calib_cache" in record:
        _print_cache(record["calib_cache"])
    if "sparsity" not in record:
        return
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



def _print_cache(summary: dict) -> None:
    scales = summary["scale_range"]
    console.print(f"calibration cache {summary['path']} ({summary['header']}): {summary['tensors']} tensors"
                  + (f", scales {scales[0]:.3g}..{scales[1]:.3g} (amax {summary['amax_range'][0]:.3g}.."
                     f"{summary['amax_range'][1]:.3g})" if scales else ""))
    if "activations" in summary:
        missing = summary["missing"]
        console.print(f"{summary['activations'] - len(missing)} of the model's {summary['activations']} activations "
                      f"have a scale" + (f"; missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
                                         if missing else ""))
        if summary["unknown"]:
            console.print(f"{len(summary['unknown'])} cache entries name no tensor of the model "
                          f"({', '.join(summary['unknown'][:4])})")


# ---------------------------------------------------------------- deploy / report
# implicit INT8, DLA and DeepStream (deploy/extras.py)
ImplicitOpt = Annotated[bool, typer.Option("--implicit", help="Implicit INT8: the floating-point ONNX built with --int8 "
                                           "--fp16 --calib (JetPack 5, DLA, DeepStream).")]
CalibCacheOpt = Annotated[Optional[str], typer.Option("--calib-cache", help="With --implicit: the TensorRT calibration "
                                                      "cache from `orinflow calib-cache`.")]
DlaOpt = Annotated[Optional[int], typer.Option("--dla", help="Build for this DLA core (0 or 1), GPU fallback allowed.")]
DeepStreamOpt = Annotated[bool, typer.Option("--deepstream", help="Add nvinfer's config_infer_primary.txt and "
                                             "labels.txt.")]


@app.command()
@cli_errors
def deploy(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model to deploy (FP32/FP16, Q/DQ, 2:4).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT_FOLDER",
                                                   help="Bundle folder (default: "
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
    implicit: ImplicitOpt = False,
    calib_cache: CalibCacheOpt = None,
    dla: DlaOpt = None,
    deepstream: DeepStreamOpt = False,
    target: Annotated[str, typer.Option("--target", help="jetson (TensorRT bundle) or openvino (x86 bundle: "
                                        "infer.py on OpenVINO, bench.sh with benchmark_app).")] = "jetson",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
    trust_cache: Annotated[bool, typer.Option("--trust-cache", help="With --implicit: bundle a calibration cache "
                                              "that covers none of the model's activations, or whose emulation by "
                                              "calib-cache lost more than 10 points.")] = False,
    verbose: VerboseOpt = False,
):
    """Jetson bundle: the ONNX, build_engine.sh (trtexec flags read from the model), bench.sh, infer.py, README;
    or with --target openvino an x86 bundle."""
    from .. import api

    record = api.deploy(model, output=output, trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                        max_batch=max_batch, workspace_mib=workspace_mib, nms=nms, pre_topk=pre_topk,
                        keep_topk=keep_topk, iou=iou, conf=conf, implicit=implicit, calib_cache=calib_cache, dla=dla,
                        deepstream=deepstream, target=target, overwrite=overwrite, trust_cache=trust_cache, say=say)
    if record.get("target") == "openvino":
        console.print(f"x86 bundle [bold]{esc(record['bundle'])}[/bold] (OpenVINO)"
                      + ("; EfficientNMS_TRT removed, infer.py runs orinflow's NMS" if record["nms_removed"] else ""),
                      markup=True)
        console.print(shlex.join(record["bench"]["1"]), highlight=False, soft_wrap=True, markup=False)
        return
    console.print(f"bundle [bold]{esc(record['bundle'])}[/bold]: {len(record['build_engine'])} trtexec arguments",
                  markup=True)
    if "nms" in record:
        console.print(f"end-to-end: {record['nms']['flavour']} NMS inside the engine (keep-topk "
                      f"{record['nms']['keep_topk']}, IoU {record['nms']['iou']}, conf {record['nms']['conf']})")
    if not record["traits"]["has_processing"]:
        console.print("[yellow]warning:[/yellow] the model carries no orinflow metadata, so the bundle's infer.py "
                      "cannot know its pre/post-processing (build_engine.sh and bench.sh work)", markup=True)
    if "dla" in record:
        ops = record["dla"]["expected_gpu_ops"]
        console.print(f"DLA core {record['dla']['core']}: expected on the GPU: "
                      + (", ".join(f"{op} ({n})" for op, n in ops.items()) or "nothing read from the graph"))
    for note in record.get("deepstream", {}).get("notes", {}).values():
        console.print(f"[yellow]deepstream:[/yellow] {esc(note)}", markup=True)
    console.print(shlex.join(record["build_engine"]), highlight=False, soft_wrap=True, markup=False)


@app.command()
@cli_errors
def report(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Run records (.json) or folders searched for them "
                                                            "(default: the workspace).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT_FOLDER",
                                                   help="Report folder (default: "
                                                   "workspace/report).")] = None,
    verbose: VerboseOpt = False,
):
    """report.md and a self-contained report.html: every evaluated variant side by side, with plots."""
    from .. import api

    written = api.report(sources, output=output)
    if written["skipped"]:
        console.print(f"skipped {len(written['skipped'])} .json file(s) that are not JSON: "
                      + ", ".join(written["skipped"][:3]) + (" ..." if len(written["skipped"]) > 3 else ""),
                      highlight=False, soft_wrap=True)
    console.print(f"report of {written['rows']} models: [bold]{esc(written['markdown'])}[/bold] and "
                  f"[bold]{esc(written['html'])}[/bold]", markup=True)


# ---------------------------------------------------------------- demo
@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", metavar="OUT_FOLDER",
                                          help="Where the demo writes its data and models.")] = Path(
        "workspace/demo"),
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs per model.")] = 30,
    verbose: VerboseOpt = False,
):
    """Offline run on the embedded shapes detector: export, PTQ for TensorRT and CPU, a short QAT, compare, then a Jetson bundle and the report."""
    from ..demo.pipeline import run_demo
    from ..io import check_output_folder

    run_demo(check_output_folder(workdir, flag="--workdir"), runs, console)
