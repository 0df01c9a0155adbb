"""--modules: checkpoints that pickle a fork's or a user's own module classes."""
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from orinflow.cli import app
from orinflow.errors import OrinflowError
from orinflow.models import load_model

runner = CliRunner()

BLOCK = textwrap.dedent('''
    from torch import nn


    class MyBlock(nn.Module):
        """A fork's block: a conv followed by a learned per-channel gain."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.gain = nn.Parameter(torch.ones(1, inner.conv.out_channels, 1, 1) * 1.5)
            for key in ("f", "i", "type", "np"):  # Ultralytics' layer bookkeeping
                setattr(self, key, getattr(inner, key))

        def forward(self, x):
            return self.inner(x) * self.gain


    import torch  # noqa: E402
''')


@pytest.fixture(scope="module")
def fork_checkpoint(tmp_path_factory):
    """A YOLOv8 built from YAML with one layer swapped for a block that a fork defines in ultralytics' own module."""
    import ultralytics.nn.modules.block as block_module
    from ultralytics.nn.tasks import DetectionModel

    folder = tmp_path_factory.mktemp("fork")
    (folder / "blocks.py").write_text(BLOCK)
    namespace: dict = {}
    exec(compile(BLOCK, "blocks.py", "exec"), namespace)
    fork_block = namespace["MyBlock"]
    fork_block.__module__, fork_block.__qualname__ = block_module.__name__, "MyBlock"
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.model[1] = fork_block(model.model[1])
    block_module.MyBlock = fork_block  # as in the fork, while it is saved
    try:
        torch.save({"model": model.half(), "train_args": {}}, folder / "fork.pt")
    finally:
        del block_module.MyBlock  # the installed Ultralytics has no such class
    return folder


def test_fork_checkpoint_fails_clearly_without_modules(fork_checkpoint):
    with pytest.raises(OrinflowError, match=r"ultralytics\.nn\.modules\.block\.MyBlock.*--modules"):
        load_model(fork_checkpoint / "fork.pt", imgsz=64)


def test_fork_checkpoint_loads_exports_and_evaluates_with_modules(fork_checkpoint, tiny_shapes, tmp_path):
    adapter = load_model(fork_checkpoint / "fork.pt", imgsz=64, modules=[fork_checkpoint / "blocks.py"])
    assert type(adapter.module.model[1]).__name__ == "MyBlock" and adapter.family == "ultralytics"
    result = runner.invoke(app, ["export", "-m", str(fork_checkpoint / "fork.pt"), "--imgsz", "64",
                                 "--modules", str(fork_checkpoint / "blocks.py"), "-o", str(tmp_path / "fork.onnx")])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output
    result = runner.invoke(app, ["evaluate", "-m", str(fork_checkpoint / "fork.pt"), "--imgsz", "64", "--modules",
                                 str(fork_checkpoint / "blocks.py"), "--yaml", str(tiny_shapes), "--runs", "0"])
    assert result.exit_code == 0, result.output


def test_a_modules_file_that_fails_to_import_is_one_line(fork_checkpoint, tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_package_anywhere\n")
    result = runner.invoke(app, ["export", "-m", str(fork_checkpoint / "fork.pt"), "--modules",
                                 str(tmp_path / "broken.py")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "broken.py" in result.stderr and "not_a_package_anywhere" in result.stderr


def test_a_user_package_path_is_registered(tmp_path):
    """Classes pickled under a package that is not installed resolve from the --modules file."""
    import sys

    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        from torch import nn


        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
    '''))
    namespace: dict = {}
    exec(compile((tmp_path / "mine.py").read_text(), "mine.py", "exec"), namespace)
    head = namespace["Head"]
    head.__module__ = "userpkg.nets.heads"
    import types

    for name in ("userpkg", "userpkg.nets", "userpkg.nets.heads"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["userpkg.nets.heads"].Head = head
    torch.save({"model": head()}, tmp_path / "head.pt")
    for name in ("userpkg", "userpkg.nets", "userpkg.nets.heads"):
        del sys.modules[name]

    from orinflow.models.base import pickle_classes, torch_load
    from orinflow.models.custom import import_modules, resolve_classes

    classes = pickle_classes(tmp_path / "head.pt")
    with pytest.raises(OrinflowError, match="userpkg.nets.heads.Head"):
        resolve_classes(tmp_path / "head.pt", classes, {})
    resolve_classes(tmp_path / "head.pt", classes, import_modules([tmp_path / "mine.py"]))
    assert type(torch_load(tmp_path / "head.pt")["model"]).__name__ == "Head"
