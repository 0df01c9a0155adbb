import importlib.util

from conftest import ASSETS


def resnet_module():
    spec = importlib.util.spec_from_file_location("resnet_cifar_test", ASSETS / "resnet_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet20_state():
    return resnet_module().resnet20().state_dict()


def load_asset(name: str):
    """A Python file of tests/assets, imported as a module."""
    spec = importlib.util.spec_from_file_location(f"asset_{name.removesuffix('.py')}", ASSETS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def confident_untrained_export(yaml_name: str, folder, imgsz: int = 128):
    """An untrained Ultralytics model from its YAML, its class scores raised so that instances are kept (they start
    near 1e-5), and its ONNX export's record: (adapter, record)."""
    import torch

    from orinflow.api import load
    from orinflow.export import export_onnx

    torch.manual_seed(0)
    adapter = load(yaml_name, imgsz=imgsz)
    with torch.no_grad():
        for branch in adapter.module.model[-1].cv3:
            branch[-1].bias += 10
    return adapter, export_onnx(adapter, folder / f"{yaml_name.removesuffix('.yaml')}.onnx").record
