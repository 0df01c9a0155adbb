"""The adapter interface every model family implements, and what they share."""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import OrinflowError
from .processing import Processing, UsesProcessing


@dataclass
class ModelAdapter(UsesProcessing):
    """A loaded PyTorch model with everything needed to feed it and read it.

    module:      eval-mode float32 nn.Module whose first output is the raw head output
                 that the exported ONNX returns too (decode included, NMS excluded).
    processing:  the pre/post-processing spec (shared with every runtime).
    """

    family: str
    source: str
    module: nn.Module
    processing: Processing
    extra: dict = field(default_factory=dict)

    def export_module(self) -> nn.Module:
        return RawOutput(self.module)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


class RawOutput(nn.Module):
    """Returns only the first output: inference-mode heads also return training features."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        y = self.module(x)
        return y[0] if isinstance(y, (tuple, list)) else y


def pickle_classes(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every global a torch zip checkpoint references, read without running it.

    An empty set for files that are not zip checkpoints (legacy torch pickles, other formats);
    a clear error for a zip checkpoint that is truncated or damaged.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return set()
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                raise OrinflowError(f"{path} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl)")
            data = archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise OrinflowError(f"{path} is a truncated or damaged PyTorch checkpoint ({_first_line(e)})") from e
    import pickletools

    found, pushed, memo = set(), [None, None], {}
    try:  # STACK_GLOBAL takes the two strings pushed before it, literally or from the memo
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(tuple(arg.split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                found.add((pushed[-2], pushed[-1]))
            elif op.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1]
                continue
            if op.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(arg))
            else:
                pushed.append(arg if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name) else None)
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise OrinflowError(f"{path} is a damaged PyTorch checkpoint (its pickle does not parse: "
                            f"{_first_line(e)})") from e
    return found


def torch_load(path: Path, unpickler: type[pickle.Unpickler] | None = None, weights_only: bool = False):
    """torch.load on the CPU. `weights_only=False` (a whole pickled model, Ultralytics/YOLOv5) runs code from the
    file: load only files you trust. State dicts load with `weights_only=True`, which runs none."""
    kwargs = {}
    if unpickler is not None:
        kwargs["pickle_module"] = type("PickleModule", (), {"Unpickler": unpickler, "load": pickle.load,
                                                           "__name__": "orinflow_pickle"})
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, **kwargs)
    except pickle.UnpicklingError as e:
        if weights_only and ("Unsupported global" in str(e) or "GLOBAL" in str(e)):
            raise OrinflowError(f"{path} pickles Python objects besides tensors ({_unsafe_global(e)}); orinflow "
                                "reads weights for --arch with torch.load(weights_only=True), which runs no code "
                                "from the file: save model.state_dict() instead") from e
        raise OrinflowError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise OrinflowError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from e
    except (ModuleNotFoundError, AttributeError) as e:
        raise OrinflowError(f"{path} references code orinflow does not know ({_first_line(e)})") from e


def _unsafe_global(error: Exception) -> str:
    """The global torch's weights-only unpickler refused, from its message."""
    import re

    found = re.search(r"(?:Unsupported global|GLOBAL|global):? (?:GLOBAL )?([\w.]+)", str(error))
    return f"it names {found[1]}" if found else _first_line(error)


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every `bn` that follows a `conv` inside a block (YOLOv5's Conv) into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in module.modules():
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            block.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            block.bn = None
    return module


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
