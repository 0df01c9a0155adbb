"""Model adapters, one per family, behind `load_model` which picks the family from the file."""
from __future__ import annotations

from pathlib import Path

from ..errors import OrinflowError
from ..io import require_file
from .base import ModelAdapter, pickle_classes
from .custom import HANDLED_BY_ADAPTERS, import_modules, resolve_classes
from .onnx_model import OnnxModel, load_onnx
from .processing import Processing

__all__ = ["ModelAdapter", "OnnxModel", "Processing", "load_model", "detect_family"]

ULTRALYTICS_YAML_HINT = "an Ultralytics model YAML such as yolo26n.yaml"


def detect_family(path: Path, arch: str | None, provided: dict | None = None,
                  classes: set[tuple[str, str]] | None = None) -> str:
    """Which adapter fits: from the suffix, then from the classes the pickle names (without running it).

    A checkpoint whose classes come from `provided` (--modules) and that subclasses an Ultralytics
    model is an Ultralytics checkpoint too. `classes`: the checkpoint's `pickle_classes`, when already read.
    """
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".yaml", ".yml"):
        return "ultralytics"
    if arch:
        return "classifier"
    modules = {module for module, _ in (pickle_classes(path) if classes is None else classes)}
    if any(m.startswith("models.") for m in modules):
        return "yolov5"
    if any(m.startswith("ultralytics") for m in modules) or _ultralytics_model(provided):
        return "ultralytics"
    if modules and modules <= {"torch", "torch._utils", "collections", "__builtin__", "builtins", "numpy",
                               "numpy.core.multiarray", "numpy._core.multiarray", "_codecs"}:
        return "classifier"  # a plain state dict: load_classifier asks for --arch
    raise OrinflowError(f"{path}: not a model orinflow recognises (expected an Ultralytics or YOLOv5 checkpoint, "
                        f"{ULTRALYTICS_YAML_HINT}, an orinflow ONNX, or weights with --arch)")


def _ultralytics_model(provided: dict | None) -> bool:
    return any(getattr(c, "__module__", "").startswith("ultralytics") for cls in (provided or {}).values()
               for c in getattr(cls, "__mro__", ())[1:])


def load_model(model: str | Path, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
               crop_fraction: float | None = None, modules: list[str | Path] | None = None, head: str | None = None,
               names: str | None = None, fuse: bool = True) -> ModelAdapter | OnnxModel:
    """Load any supported model file. `arch` alone (no file) builds an untrained torchvision/user model.

    `modules`: Python files (or package.module names) defining classes the checkpoint pickles
    (a fork's or the user's own blocks); see models/custom.py.
    `head` (with `arch`): the user's model is a detector whose first output has that layout
    (models/heads.py); `names` its classes (a dataset YAML or 'a,b,c').
    `fuse=False` keeps BatchNorm apart from the convs (pruning needs them; inference fuses).
    """
    is_onnx = model is not None and Path(model).suffix.lower() == ".onnx"  # carries its own processing
    if (head is not None or names is not None) and not (is_onnx and arch is not None):
        if arch is None:
            raise OrinflowError("--head and --names describe your own detector given with --arch file.py:factory; "
                                "an ONNX from another exporter takes them in `orinflow adopt`")
        if head is None:
            raise OrinflowError(f"--names is for detectors: name the output layout of {arch} with --head")
        from .detector import load_custom_detector

        path = require_file(model, "model") if model else None
        return load_custom_detector(path, arch, head, imgsz, names, mean, std)
    if model is None or str(model) == "":
        if arch is None:
            raise OrinflowError("give a model file with -m, or an architecture with --arch")
        from .classifier import load_classifier

        return load_classifier(None, arch, imgsz, mean, std, crop_fraction)
    path = Path(model)
    is_builtin_yaml = path.suffix.lower() in (".yaml", ".yml") and not path.exists() and path.parent == Path(".")
    if not is_builtin_yaml:  # Ultralytics ships its architecture YAMLs inside the package
        require_file(path, "model")
    provided = import_modules(modules or [])
    if path.suffix.lower() == ".onnx":
        return load_onnx(path)
    is_checkpoint = path.suffix.lower() not in (".yaml", ".yml")
    classes = pickle_classes(path) if is_checkpoint else set()  # read once, without running the pickle
    family = detect_family(path, arch, provided, classes)
    if is_checkpoint:  # every class it pickles must resolve
        resolve_classes(path, classes, provided, skip=HANDLED_BY_ADAPTERS if family == "yolov5" else ())
    if family == "yolov5":
        from .yolov5 import load_yolov5

        return load_yolov5(path, imgsz, provided, fuse)
    if family == "ultralytics":
        from .ultralytics import load_ultralytics

        return load_ultralytics(path, imgsz, fuse)
    from .classifier import load_classifier

    return load_classifier(path, arch, imgsz, mean, std, crop_fraction)


def prunable_copy(adapter: ModelAdapter):
    """A copy of the adapter's (unfused) network that a dependency graph can prune: the one family-specific
    rewrite (Ultralytics' chunked blocks into two convs) happens here."""
    import copy

    module = copy.deepcopy(adapter.module).float().eval()
    if adapter.family == "ultralytics":
        from .ultralytics import split_chunked_blocks

        split_chunked_blocks(module)
    return module


def save_checkpoint(adapter: ModelAdapter, module, path: Path, info: dict) -> None:
    """`module` written as an ordinary checkpoint of the adapter's family (loading it needs no pruning library)."""
    if adapter.family == "ultralytics":
        from .ultralytics import save_ultralytics

        return save_ultralytics(module, path, info)
    if adapter.family == "yolov5":
        from .yolov5 import save_yolov5

        return save_yolov5(module, path, info)
    from .classifier import save_classifier  # torchvision, --arch classifiers and --arch detectors: a state dict

    return save_classifier(module, path, info)
