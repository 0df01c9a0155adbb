"""Model preparation: export, adopt, calibrate."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_OPSET
from ..errors import OrinflowError
from .app import (ArchOpt, CropOpt, DataOpt, ImgszOpt, KeepTopkOpt, LayoutOpt, MeanOpt, ModelOpt, ModulesOpt,
                  NamesOpt, NmsConfOpt, NmsIouOpt, PreTopkOpt, SplitOpt, StdOpt, VerboseOpt, app, cli_errors, console,
                  esc, say)


# ---------------------------------------------------------------- export
@app.command()
@cli_errors
def export(
    model: ModelOpt,
    arch: ArchOpt = None,
    imgsz: ImgszOpt = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = DEFAULT_OPSET,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic or static batch dimension.")] = False,
    half: Annotated[bool, typer.Option("--half", help="FP16 weights and arithmetic (float32 input/output).")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    image: Annotated[Optional[Path], typer.Option("--image", help="Real image for the parity check (default: an "
                                                  "image from the embedded demo recipe).")] = None,
    nms: Annotated[Optional[str], typer.Option("--nms", help="End-to-end detector: append decode and NMS, onnx "
                                               "(standard NonMaxSuppression; ONNX Runtime and TensorRT) or trt "
                                               "(TensorRT's EfficientNMS_TRT plugin: num_dets, boxes, scores, "
                                               "classes).")] = None,
    pre_topk: PreTopkOpt = 30000, keep_topk: KeepTopkOpt = 300, iou: NmsIouOpt = None, conf: NmsConfOpt = 0.25,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx", help="Output .onnx (default: "
                                                   "workspace/models/onnx/raw/<name>_<imgsz>.onnx).")] = None,
    mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None, modules: ModulesOpt = None,
    head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Export a PyTorch model to ONNX, simplify it, and check PyTorch vs ONNX Runtime parity on a real image."""
    from .. import api

    record = api.export(model, output=output, opset=opset, dynamic=dynamic, half=half, simplify=simplify,
                        image=image, nms=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf, arch=arch,
                        imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names,
                        say=say)
    parity = record["parity"]
    console.print(f"exported [bold]{esc(record['model'])}[/bold] ({record['size_bytes'] / 1e6:.2f} MB, opset {opset}, "
                  f"{'dynamic' if dynamic else 'static'} batch) in {record['seconds']} s", markup=True)
    console.print(f"parity PyTorch vs ONNX Runtime: max |diff| = {parity['max_abs_diff']:.3g} "
                  f"(output range ±{parity['output_max_abs']:.3g}, limit {parity['limit']:.3g})")
    if "nms" in record:
        spec, check = record["nms"], record["nms"]["check"]
        console.print(f"end-to-end ({spec['flavour']} NMS): pre-topk {spec['pre_topk']}, keep-topk {spec['keep_topk']}, "
                      f"IoU {spec['iou']}, conf {spec['conf']}" + (
                          f"; {check['detections']} detections on the parity image, "
                          f"{'the same as' if check['same'] else 'against'} {check['postprocessed']} from orinflow's "
                          "post-processing" if check else "; checked as ONNX (TensorRT runs the plugin)"))


# ---------------------------------------------------------------- adopt
@app.command()
@cli_errors
def adopt(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX detector from another exporter (Ultralytics, "
                                       "the yolov5 repository, YOLOX, an end-to-end graph with NMS).")],
    head: Annotated[Optional[str], typer.Option("--head", help="Output layout: yolov8 (batch, 4+nc, anchors), yolov5 "
                                                "(batch, anchors, 5+nc), yolox (batch, grid cells, 5+nc; boxes "
                                                "relative to the cells) or end2end (batch, boxes, 6). Default: "
                                                "read from the output's shape.")] = None,
    names: Annotated[Optional[str], typer.Option("--names", help="Class names: a dataset YAML or 'a,b,c' (default: "
                                                 "the exporter's metadata, else numbers).")] = None,
    imgsz: Annotated[Optional[int], typer.Option("--imgsz", help="Input size, only for inputs without a fixed "
                                                 "size.")] = None,
    letterbox: Annotated[bool, typer.Option("--letterbox/--resize", help="Keep the aspect and pad with grey 114, "
                                            "or stretch to the input size.")] = True,
    bgr: Annotated[Optional[bool], typer.Option("--bgr/--rgb", help="Channel order of the input (default: RGB; "
                                                "BGR for --head yolox).", show_default=False)] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", help="Input = (pixel/255 - mean) / std: mean 'r,g,b' "
                                                "(default 0).")] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="std 'r,g,b', fractions allowed (default 1, pixels "
                                               "0..1; yolox 1/255, pixels 0..255).")] = None,
    kpt_shape: Annotated[Optional[str], typer.Option("--kpt-shape", help="A pose model's keypoints and values per "
                                                     "keypoint, '17,3' (default: the exporter's metadata).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx", help="Output .onnx (default: "
                                                   "workspace/models/onnx/adopted/<name>.onnx).")] = None,
    verbose: VerboseOpt = False,
):
    """Give an ONNX detector from elsewhere orinflow's pre/post-processing, so every command takes it."""
    from .. import api

    record = api.adopt(model, head=head, names=names, imgsz=imgsz, letterbox=letterbox, bgr=bgr, mean=mean, std=std,
                       kpt_shape=kpt_shape, output=output)
    how = "given" if record["head_given"] else f"read from its output {record['output_shape']}"
    console.print(f"adopted [bold]{esc(record['model'])}[/bold]: a {record['task']} model, head {record['head']} "
                  f"({esc(how)}), "
                  f"{record['classes']} classes, input {record['imgsz'][0]}x{record['imgsz'][1]}, "
                  f"{esc(record['input'])}",
                  markup=True)


# ---------------------------------------------------------------- calibrate
@app.command()
@cli_errors
def calibrate(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model whose preprocessing to use (any format "
                                                 "-m takes). Without it: the standard detector preprocessing "
                                                 "(letterbox, RGB, 0..1) at --imgsz, default 640.")] = None,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images to draw (all if fewer).")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random selection.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.npy", help="Output .npy (default: "
                                                   "workspace/calib/<model>_<data>_<split>_<N>.npy, or "
                                                   "workspace/calib/<data>.npy without -m).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Build a calibration set (N,3,H,W float32 .npy) with exactly the model's preprocessing (or the standard
    detector's, without -m)."""
    from .. import api

    if not data:
        raise OrinflowError("give the images with --yaml data.yaml (and --split) or --data folder/")
    record = api.calibrate(model, data, split=split, num_images=num_images, seed=seed, output=output, arch=arch,
                           imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names,
                           say=say)
    console.print(f"calibration set [bold]{esc(record['output'])}[/bold]: {record['images']} images, shape "
                  f"{tuple(record['shape'])}", markup=True)
