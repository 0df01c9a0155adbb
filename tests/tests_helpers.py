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
