"""Adapter for classifiers: a torchvision architecture or a user factory, plus a weights file."""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from ..config import DEFAULT_CLS_IMGSZ, IMAGENET_MEAN, IMAGENET_STD
from ..errors import OrinflowError
from .base import ModelAdapter, torch_load
from .processing import Processing

IMAGENET_CROP_FRACTION = 0.875  # resize 256, crop 224
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")


def build_arch(arch: str) -> nn.Module:
    """`resnet18` (torchvision), `path/to/file.py:func` or `package.module:func` -> a fresh nn.Module."""
    if ":" not in arch:
        import torchvision

        try:
            return torchvision.models.get_model(arch, weights=None)
        except ValueError:
            raise OrinflowError(f"unknown torchvision architecture {arch!r}; give file.py:func or package.module:func "
                                "for your own model") from None
    target, func_name = arch.rsplit(":", 1)
    module = import_target(target)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise OrinflowError(f"{target} has no callable {func_name!r}")
    try:
        model = factory()
    except Exception as e:
        raise OrinflowError(f"{arch}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise OrinflowError(f"{arch} did not return a torch.nn.Module")
    return model


def import_target(target: str):
    """A `file.py` (imported under a private name) or an importable `package.module`."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise OrinflowError(f"Python file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"orinflow_user_arch_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise OrinflowError(f"could not import {path}: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(target)
    except ImportError as e:
        raise OrinflowError(f"could not import module {target!r}: {e}") from e


def extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors in common checkpoint layouts; strip DataParallel's `module.` prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), (dict, nn.Module)):
                return extract_state_dict(obj[key], path)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OrinflowError(f"{path} holds no state dict (looked for tensors at the top and under {STATE_DICT_KEYS})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                           r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)")


def state_dict_mismatch(error: RuntimeError, shown: int = 3) -> str:
    """torch's load_state_dict error (a header, then a line per problem) as one line, keys counted."""
    problems, sizes = [], []
    for line in str(error).splitlines()[1:]:
        line = " ".join(line.split())
        if (size := SIZE_MISMATCH.search(line)) is not None:
            sizes.append(f"{size[1]} {size[2]} in the file, {size[3]} in the model")
            continue
        head, _, rest = line.partition(": ")
        keys = re.findall(r'"([^"]+)"', rest)
        if keys:
            problems.append(f"{head}: {len(keys)} ({', '.join(keys[:shown])}{_more(keys, shown)})")
        elif line:
            problems.append(line[:200])
    if sizes:
        problems.append(f"size mismatch: {len(sizes)} ({'; '.join(sizes[:shown])}{_more(sizes, shown)})")
    return "; ".join(problems) or " ".join(str(error).split())[:300]


def _more(items: list, shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""


def load_weights(model: nn.Module, path: Path, arch: str) -> None:
    """The state dict in `path` into `model`, or one line saying how they differ.

    A checkpoint that `orinflow prune` wrote has fewer channels than `arch` builds: its layers are
    resized to the stored shapes first (and only then: a plain mismatch stays an error)."""
    saved = torch_load(path, weights_only=True)
    state = extract_state_dict(saved, path)
    if isinstance(saved, dict) and isinstance(saved.get(PRUNED_KEY), dict):
        resize_to_state(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise OrinflowError(f"{path} does not fit --arch {arch}: {state_dict_mismatch(e)}") from e


PRUNED_KEY = "orinflow_pruned"  # what `orinflow prune` writes beside the state dict of a pruned model


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Rebuild every Conv2d/BatchNorm2d/Linear whose stored weight has other channel counts."""
    for name, layer in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or tuple(weight.shape) == tuple(layer.weight.shape):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if isinstance(layer, nn.Conv2d):
            depthwise = layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1
            groups = weight.shape[0] if depthwise else layer.groups
            new = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], layer.kernel_size, layer.stride,
                            layer.padding, layer.dilation, groups, layer.bias is not None, layer.padding_mode)
        elif isinstance(layer, nn.BatchNorm2d):
            new = nn.BatchNorm2d(weight.shape[0], layer.eps, layer.momentum, layer.affine,
                                 layer.track_running_stats)
        elif isinstance(layer, nn.Linear):
            new = nn.Linear(weight.shape[1], weight.shape[0], layer.bias is not None)
        else:
            continue
        setattr(parent, name.rpartition(".")[2], new)


def save_classifier(model: nn.Module, path: Path, info: dict) -> None:
    """A state dict (what --arch loads) with the note that marks it pruned."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), PRUNED_KEY: info}, tmp)


def load_classifier(path: Path | None, arch: str | None, imgsz: int | None = None, mean=None, std=None,
                    crop_fraction: float | None = None) -> ModelAdapter:
    if arch is None:
        raise OrinflowError(f"{path} is a plain state dict: name its architecture with --arch "
                            "(e.g. resnet50, models.py:resnet20 or mypkg.nets:build)")
    model = build_arch(arch)
    if path is not None:
        load_weights(model, path, arch)
    size = imgsz or DEFAULT_CLS_IMGSZ
    fraction = crop_fraction if crop_fraction is not None else (IMAGENET_CROP_FRACTION if size >= 128 else 1.0)
    if not 0 < fraction <= 1:
        raise OrinflowError(f"--crop must be in (0, 1], got {fraction}")
    processing = Processing(task="classify", imgsz=(size, size), mean=tuple(mean or IMAGENET_MEAN),
                            std=tuple(std or IMAGENET_STD), crop_fraction=fraction)
    return ModelAdapter(family="classifier", source=str(path or arch), module=model.float().eval(),
                        processing=processing, extra={"arch": arch})
