"""The Typer app, its consoles, the error handling every command shares, and the options several commands take."""
from __future__ import annotations

import functools
import os
import shutil
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

from ..errors import OrinflowError

os.environ.setdefault("YOLO_OFFLINE", "1")

app = typer.Typer(help="Vision models to fast, accurate INT8 ONNX for TensorRT on Jetson Orin, with measured "
                       "accuracy and latency.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
# Tables are wide: never squeeze them below 180 columns when output is a pipe or a log.
_width = max(180, shutil.get_terminal_size((180, 24)).columns)
# Names and paths from models, data and flags reach these consoles: Rich markup is off unless a call asks for it
# (and then every such value goes through `esc`), so `-o 'exp[v2]'` prints as written.
console = Console(width=_width, markup=False)
err_console = Console(stderr=True, width=_width, markup=False)


def esc(value) -> str:
    """A value from a model, data or flag, made literal inside Rich markup."""
    from rich.markup import escape

    return escape(str(value))


def say(message: str) -> None:
    """What the API says while it works, printed literally."""
    console.print(message, highlight=False, soft_wrap=True)

# ---- options shared by several commands ----
ModelOpt = Annotated[str, typer.Option("-m", "--model", help="Model: Ultralytics/YOLOv5 .pt, Ultralytics model YAML, "
                                       "orinflow .onnx, or a weights file with --arch.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a weights file: a classifier (a "
                                                "torchvision name such as resnet50, path/to/file.py:func or "
                                                "package.module:func), or your own detector (file.py:func with "
                                                "--head).")]
ImgszOpt = Annotated[Optional[int], typer.Option("--imgsz", help="Input size (square). Default: 640 detectors, "
                                                 "224 classifiers; ONNX models keep their own.")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Input = (pixel/255 - mean) / std: mean 'r,g,b' "
                                                "(default ImageNet 0.485,0.456,0.406 for classifiers, 0 for "
                                                "detectors).")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Normalisation std 'r,g,b', fractions allowed "
                                               "(1/255 feeds 0..255 pixels; default ImageNet 0.229,0.224,0.225 "
                                               "for classifiers, 1 for detectors).")]
CropOpt = Annotated[Optional[float], typer.Option("--crop", help="Classifier centre-crop fraction: resize to "
                                                  "imgsz/crop, crop imgsz (default 0.875 at >=128 px, else 1.0).")]
DataOpt = Annotated[Optional[str], typer.Option("--yaml", "--data", help="Dataset YAML (Ultralytics format), "
                                                "class-per-subfolder tree, or image folder.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of the dataset YAML to read.")]
LayoutOpt = Annotated[Optional[str], typer.Option("--head", help="With --arch file.py:func, the model is a "
                                                  "detector: its first output's layout, yolov8 (batch, 4+nc, "
                                                  "anchors), yolov5 (batch, anchors, 5+nc), yolox (grid-relative) "
                                                  "or end2end (batch, boxes, 6).")]
NamesOpt = Annotated[Optional[str], typer.Option("--names", help="Class names of an --arch detector: a dataset YAML "
                                                 "or 'a,b,c' (default: numbers).")]
Int8KernelsOpt = Annotated[str, typer.Option("--int8-kernels", help="How ONNX Runtime and OpenVINO run a Q/DQ "
                                            "model: auto runs their integer kernels only where they are measured "
                                            "to agree with the model's exact function on this CPU (else the exact "
                                            "path, said in the output); integer always (a measured disagreement "
                                            "is printed); exact never.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show full tracebacks on errors.")]
ModulesOpt = Annotated[Optional[list[Path]], typer.Option("--modules", help="Python file (repeatable) defining "
                                                          "classes the checkpoint pickles, such as a fork's "
                                                          "ultralytics.nn.modules.block.MyBlock.")]


def _one_line(error: Exception, verbose: bool) -> str:
    """An OrinflowError's whole message on one line; another exception's type and first line, with a hint."""
    if isinstance(error, OrinflowError):
        return " ".join(str(error).split()) or type(error).__name__
    first = (str(error).strip().splitlines() or [""])[0]
    first = first if len(first) <= 300 else first[:297] + "..."  # a library may put a whole graph on one line
    return f"{type(error).__name__}: {first}" + ("" if verbose else " (run with --verbose for the traceback)")


def cli_errors(func: Callable) -> Callable:
    """One clear line and exit code 2 for any failure; the traceback only with --verbose; exit 130 on Ctrl-C
    (orinflow/entry.py)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:  # in-process use; the console scripts exit from their signal handler
            from ..io import remove_unfinished

            remove_unfinished()
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            if verbose:
                err_console.print(traceback.format_exc(), markup=False, highlight=False)
            err_console.print(Text.assemble(("error:", "red"), " ", _one_line(e, verbose)), soft_wrap=True)
            raise typer.Exit(2)
    return wrapper


# ---- NMS inside the graph (export --nms, deploy --nms; export/nms.py)
PreTopkOpt = Annotated[int, typer.Option("--pre-topk", help="With --nms: candidates (by best class score) that reach "
                                         "NMS.")]
KeepTopkOpt = Annotated[int, typer.Option("--keep-topk", help="With --nms: detections kept per image.")]
NmsIouOpt = Annotated[Optional[float], typer.Option("--iou", help="With --nms: NMS IoU (default: the family's, 0.6 "
                                                    "YOLOv5, 0.7 Ultralytics).")]
NmsConfOpt = Annotated[float, typer.Option("--conf", help="With --nms: score threshold in the graph (0.001 to "
                                           "measure mAP).")]


