"""The runner a figure comes from: ONNX Runtime or OpenVINO with their integer path settled by measurement.

A Q/DQ model that a runtime may run on integer kernels (ONNX Runtime: fusable Q/DQ node units; OpenVINO: any
8-bit Q/DQ) is settled before its first figure, on images given with `settle` (evaluate gives the data's first
images) or else on the first batch it runs: runtime/trust.py measures the runtime's integer forms against the
exact function and names the form to run. Everything else runs as it is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .trust import ASKED_EXACT, check_int8_kernels, settle


class CheckedRunner:
    def __init__(self, runner, int8_kernels: str = "auto", cache: bool = True):
        """`runner`: a plain OrtRunner or OpenVinoRunner; `int8_kernels`: auto, integer or exact; `cache`: keep the
        verdict in the workspace (a bundle's infer.py measures each time instead)."""
        self.int8_kernels = check_int8_kernels(int8_kernels)
        self.cache = cache
        self.checked = has_integer_path(runner)
        self.verdict: dict | None = None
        if self.checked and int8_kernels == "exact":
            self.verdict = dict(ASKED_EXACT)
            runner = runner.with_form("exact")
        self.runner = runner
        self.name, self.threads, self.path = runner.name, runner.threads, runner.path
        self.static_batch = runner.static_batch

    @property
    def form(self) -> str:
        return self.runner.form

    @property
    def int8(self) -> str:
        """How the model's integer part ran: "integer" kernels, "exact" (emulated), or "none" (nothing to run on
        integer kernels, or not settled yet)."""
        return self.verdict["kind"] if self.verdict else "none"

    def settle(self, probe) -> None:
        """Measure the integer forms on `probe` (or read the verdict cached for this machine) and run the form the
        verdict names from now on."""
        if not self.checked or self.verdict is not None:
            return
        made: dict = {}  # the forms built while measuring, kept for the one that runs

        def running(name, make):
            return lambda batch: made.setdefault(name, make()).run(batch)

        forms = self.runner.integer_forms()
        self.verdict = settle(Path(self.path), self.name, runtime_version(self.name),
                              {name: running(name, make) for name, make in forms.items()},
                              np.asarray(probe, np.float32), self.int8_kernels, self.threads, self.cache)
        used = self.verdict["used"]
        self.runner = made.get(used) or (forms[used]() if used in forms else self.runner.with_form(used))

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.checked and self.verdict is None:
            self.settle(batch)  # no images were given: the first input is the probe
        return self.runner.run(batch)

    def describe(self) -> dict:
        """What a record says about this run: the runtime's version, the form that ran, and the verdict."""
        return {**self.runner.describe(), "int8": self.int8, **({"int8_kernels": self.verdict} if self.verdict else {})}


def checked_runner(path, runtime: str, threads: int | None = None, int8_kernels: str = "auto",
                   cache: bool = True) -> CheckedRunner:
    """ONNX Runtime or OpenVINO on `path`, its integer path settled before the first figure."""
    if runtime == "openvino":
        from .openvino import OpenVinoRunner

        return CheckedRunner(OpenVinoRunner(path, threads), int8_kernels, cache)
    from .onnxruntime import OrtRunner

    return CheckedRunner(OrtRunner(path, threads), int8_kernels, cache)


def has_integer_path(runner) -> bool:
    if runner.name == "openvino":
        return runner.quantized
    from .onnxruntime import has_integer_units

    return has_integer_units(runner.path)


def runtime_version(runtime: str) -> str:
    if runtime == "openvino":
        from .openvino import openvino_version

        return openvino_version()
    from .onnxruntime import ort_version

    return ort_version()
