"""`orinflow <command>`: one Typer app (app.py), its commands by family: prepare.py (export, adopt,
calibrate), evaluation.py (evaluate, compare), quantization.py (quantize, sensitivity, ptq), training.py (qat,
sparsify, sparse-qat, prune), shipping.py (inspect, deploy, report, demo). The `orinflow-<command>` scripts
of the original design run the same functions."""
from __future__ import annotations

from typing import Callable

import typer

from . import prepare, evaluation, quantization, training, shipping  # registers the commands in --help order
from .app import app
from .evaluation import CompareSwitch, evaluate
from .prepare import calibrate, export
from .quantization import quantize
from .training import qat, sparse_qat, sparsify

COMMAND_FAMILIES = (prepare, evaluation, quantization, training, shipping)


def main() -> None:
    app()


def _alias(command: Callable, name: str, cls: type | None = None) -> Callable[[], None]:
    """A console script that runs exactly one command, for the original `orinflow-<name>` tools."""
    def run() -> None:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name=name, cls=cls)(command)
        single(prog_name=f"orinflow-{name}")
    return run


export_alias = _alias(export, "export")
calibrate_alias = _alias(calibrate, "calibrate")
evaluate_alias = _alias(evaluate, "evaluate", CompareSwitch)
quantize_alias = _alias(quantize, "quantize")
qat_alias = _alias(qat, "qat")
sparsify_alias = _alias(sparsify, "sparsify")
sparse_qat_alias = _alias(sparse_qat, "sparse-qat")
