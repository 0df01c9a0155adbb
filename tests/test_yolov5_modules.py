"""YOLOv5 v7.0's module classes: each forward against Ultralytics' implementation of the same block, and a
checkpoint that pickles them under yolov5's own class paths (models.common, models.experimental, models.yolo)."""
import copy
import sys
import types

import pytest
import torch
from torch import nn

from orinflow.models import yolov5_modules as ours

ULTRALYTICS_BLOCKS = {  # our class name: (Ultralytics factory, input channels)
    "Conv": (lambda u: u.conv.Conv(8, 16, 3, 2), 8),
    "DWConv": (lambda u: u.conv.DWConv(16, 16, 3), 16),
    "DWConvTranspose2d": (lambda u: u.conv.DWConvTranspose2d(16, 16, 2, 2), 16),
    "Focus": (lambda u: u.conv.Focus(3, 16, 3), 3),
    "GhostConv": (lambda u: u.conv.GhostConv(16, 32, 3, 2), 16),
    "GhostBottleneck": (lambda u: u.block.GhostBottleneck(16, 16, 3, 2), 16),
    "Bottleneck": (lambda u: u.block.Bottleneck(16, 16), 16),
    "CrossConv": (lambda u: u.block.Bottleneck(16, 16, True, 1, ((1, 3), (3, 1)), 1.0), 16),
    "BottleneckCSP": (lambda u: u.block.BottleneckCSP(16, 32, 2), 16),
    "C3": (lambda u: u.block.C3(16, 32, 2), 16),
    "C3x": (lambda u: u.block.C3x(16, 32, 2), 16),
    "C3TR": (lambda u: u.block.C3TR(16, 32, 1), 16),
    "C3Ghost": (lambda u: u.block.C3Ghost(16, 32, 1), 16),
    "SPP": (lambda u: u.block.SPP(16, 32), 16),
    "SPPF": (lambda u: u.block.SPPF(16, 32), 16),
    "TransformerBlock": (lambda u: u.transformer.TransformerBlock(16, 32, 4, 2), 16),
    "Proto": (lambda u: u.block.Proto(16, 32, 8), 16),
}


def _ultralytics():
    from ultralytics.nn import modules

    return types.SimpleNamespace(conv=modules.conv, block=modules.block, transformer=modules.transformer)


def reclass(module: nn.Module, classes: dict[str, type], override: dict | None = None) -> nn.Module:
    """Give every submodule with a yolov5 counterpart that class, as unpickling a yolov5 checkpoint does."""
    for sub in module.modules():
        name = (override or {}).get(type(sub).__name__, type(sub).__name__)
        if name in classes and type(sub).__module__.startswith("ultralytics"):
            sub.__class__ = classes[name]
    return module


@pytest.mark.parametrize("name", list(ULTRALYTICS_BLOCKS))
def test_module_matches_ultralytics(name):
    factory, channels = ULTRALYTICS_BLOCKS[name]
    torch.manual_seed(0)
    theirs = factory(_ultralytics()).eval()
    for bn in (m for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    override = {"Bottleneck": "CrossConv"} if name == "CrossConv" else None
    mine = reclass(copy.deepcopy(theirs), vars(ours), override)
    assert type(mine).__name__ == name and type(mine).__module__ == ours.__name__
    x = torch.randn(2, channels, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), theirs(x))


def test_contract_expand_and_sum():
    contract, expand = ours.Contract(), ours.Expand()
    contract.gain = expand.gain = 2
    x = torch.randn(1, 4, 8, 6)
    folded = contract(x)
    assert folded.shape == (1, 16, 4, 3)
    torch.testing.assert_close(folded[:, 8:12], x[..., 1::2, ::2])  # block (row 1, column 0)
    torch.testing.assert_close(expand(folded), x)
    total = ours.Sum()
    total.weight, total.iter = False, range(2)
    a, b, c = torch.randn(3, 1, 2, 4, 4)
    torch.testing.assert_close(total([a, b, c]), a + b + c)
    total.weight, total.w = True, nn.Parameter(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(total([a, b, c]), a + b + c * torch.sigmoid(torch.tensor(1.0)) * 2)


def test_mixconv_and_segment():
    mix = ours.MixConv2d()
    mix.m = nn.ModuleList([nn.Conv2d(4, 3, 1, bias=False), nn.Conv2d(4, 5, 3, padding=1, bias=False)])
    mix.bn, mix.act = nn.BatchNorm2d(8).eval(), nn.SiLU()
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(mix(x), mix.act(mix.bn(torch.cat([mix.m[0](x), mix.m[1](x)], 1))))
    segment = _plain(ours.Segment, nc=3, nm=4, no=5 + 3 + 4, nl=1, na=1, stride=torch.tensor([8.0]))
    segment.register_buffer("anchors", torch.ones(1, 1, 2))
    segment.m = nn.ModuleList([nn.Conv2d(4, 12, 1)])
    detect = _plain(ours.Detect, nc=3, no=12, nl=1, na=1, stride=segment.stride, anchors=segment.anchors, m=segment.m)
    boxes = segment([x])
    assert boxes.shape == (1, 36, 8)  # boxes, objectness and classes; the 4 mask coefficients are left out
    torch.testing.assert_close(boxes, detect([x])[..., :8])


def _pickle_classes() -> dict[str, types.ModuleType]:
    """yolov5's module paths, holding subclasses of orinflow's classes, while a checkpoint is written."""
    modules = {name: types.ModuleType(name) for name in ("models", "models.common", "models.experimental",
                                                          "models.yolo")}
    for (module, name), cls in ours.PICKLE_CLASSES.items():
        setattr(modules[module], name, type(name, (cls,), {"__module__": module, "__qualname__": name}))
    return modules


def _v7_model(paths: dict[str, types.ModuleType]) -> nn.Module:
    """A small 3-class YOLOv5 v7.0-style detector made of the newer blocks, with an anchor Detect head."""
    u = _ultralytics()
    common = vars(paths["models.common"])
    layers = [
        (u.conv.Focus(3, 16, 3), -1),
        (u.conv.GhostConv(16, 32, 3, 2), -1),
        (u.block.C3x(32, 32, 1), -1),
        (u.conv.Conv(32, 64, 3, 2), -1),
        (u.block.C3Ghost(64, 64, 1), -1),  # 4: P3/8
        (u.conv.Conv(64, 64, 3, 2), -1),
        (u.block.C3TR(64, 64, 1), -1),
        (u.block.SPP(64, 64), -1),  # 7: P4/16
        (u.conv.DWConvTranspose2d(64, 64, 2, 2), -1),
        (u.conv.Concat(1), [-1, 4]),
        (u.block.BottleneckCSP(128, 64, 1, False), -1),
        (_plain(common["Contract"], gain=2), -1),
        (_plain(common["Expand"], gain=2), -1),  # 12: P3/8 again
    ]
    experimental = {"CrossConv": vars(paths["models.experimental"])["CrossConv"]}
    modules = []
    for index, (layer, source) in enumerate(layers):
        layer = reclass(layer, common)
        for sub in layer.modules():  # C3x's cross convolutions are pickled from models.experimental
            if type(sub).__name__ == "Bottleneck" and getattr(sub.cv1.conv, "kernel_size", None) == (1, 3):
                sub.__class__ = experimental["CrossConv"]
        layer.f, layer.i, layer.type, layer.np = source, index, type(layer).__name__, 0
        modules.append(layer)
    detect = _plain(vars(paths["models.yolo"])["Detect"], nc=3, no=8, nl=2, na=3, stride=torch.tensor([8.0, 16.0]))
    anchors = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]], dtype=torch.float32).view(2, 3, 2)
    detect.register_buffer("anchors", anchors / detect.stride.view(-1, 1, 1))
    detect.m = nn.ModuleList(nn.Conv2d(64, 3 * 8, 1) for _ in range(2))
    detect.f, detect.i, detect.type, detect.np = [12, 7], len(modules), "Detect", 0
    model = _plain(vars(paths["models.yolo"])["DetectionModel"], save=[4, 7, 12],
                   names={0: "circle", 1: "square", 2: "triangle"}, stride=detect.stride)
    model.model = nn.Sequential(*modules, detect)
    return model.eval()


def _plain(cls: type, **attributes) -> nn.Module:
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


@pytest.fixture(scope="module")
def v7_checkpoint(tmp_path_factory):
    paths = _pickle_classes()
    sys.modules.update(paths)
    try:
        torch.manual_seed(0)
        model = _v7_model(paths)
        path = tmp_path_factory.mktemp("v7") / "yolov5_v7_blocks.pt"
        torch.save({"model": model.half(), "epoch": -1}, path)
    finally:
        for name in paths:
            del sys.modules[name]
    return path


def test_v7_checkpoint_names_yolov5_paths_and_loads(v7_checkpoint):
    from orinflow.models import load_model
    from orinflow.models.base import pickle_classes

    named = pickle_classes(v7_checkpoint)
    assert {("models.common", "C3x"), ("models.experimental", "CrossConv"), ("models.common", "DWConvTranspose2d"),
            ("models.common", "C3TR"), ("models.common", "GhostBottleneck"), ("models.common", "Contract"),
            ("models.yolo", "DetectionModel")} <= named
    adapter = load_model(v7_checkpoint, imgsz=64)
    assert adapter.family == "yolov5" and "models" not in sys.modules
    assert adapter.export_module()(torch.zeros(1, 3, 64, 64)).shape == (1, 3 * (8 * 8 + 4 * 4), 8)


def test_v7_checkpoint_exports_with_parity_and_evaluates(v7_checkpoint, tiny_shapes, tmp_path):
    import orinflow

    record = orinflow.export(v7_checkpoint, imgsz=64, output=tmp_path / "v7.onnx")
    assert record["parity"]["max_abs_diff"] <= record["parity"]["limit"]
    evaluated = orinflow.evaluate(tmp_path / "v7.onnx", tiny_shapes, runs=0, say=lambda m: None)
    assert 0 <= evaluated["metrics"]["mAP50-95"] <= 1
