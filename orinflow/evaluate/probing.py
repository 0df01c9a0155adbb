"""Does reading a model's layers change what a runtime computes? `compare`'s check, and where the departure is.

`compare` reads every paired tensor by adding it to the graph's outputs. A runtime then compiles another graph:
OpenVINO no longer fuses across a tensor that is an output, and an integer path that departs from the model's
function in the fused graph (OpenVINO 2026.4's signed quantizer after a Concat) can agree once probed. So each
ONNX side's final outputs are first computed as `evaluate` computes them (the same runner, form and
--int8-kernels verdict) and compared with the probed compilation's. Where they part beyond the trust rule's
tolerance (runtime/trust.py), the layer table describes another computation than the model's evaluation: the
record says so, and the departure is found without probing, by compiling prefixes of the graph (the graph cut
at one tensor, which becomes its only output) in the side's form and comparing each with the exact function
(ONNX Runtime's reference kernels on the same prefix). The earliest prefix that departs is found by bisection
over the side's tensors in graph order: a handful of compilations.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluated_runner(side, probe: np.ndarray):
    """The runner `evaluate` would use for an ONNX side, its integer kernels settled on `probe`."""
    from ..runtime.checked import checked_runner

    runner = checked_runner(side.model, "openvino" if side.runtime == "openvino" else "onnxruntime",
                            int8_kernels=side.int8_kernels)
    runner.settle(probe)
    return runner


def probing_effect(side, runner, capture, images: np.ndarray, folder: Path, say=print) -> dict | None:
    """None when the probed compilation (`capture`) computes `side`'s final outputs as its evaluation (`runner`,
    evaluated_runner) does, within the tolerance; else what changed and where, compiled as evaluated, the graph
    departs from its exact function."""
    from ..runtime.trust import MIN_TOLERANCE, channel_error, exact_tolerance

    evaluated = runner.run(images)
    probed = [np.concatenate(parts) for parts in zip(*(capture.run(x[None])[0] for x in images))]
    changed = channel_error(evaluated, probed)
    if changed["error"] <= MIN_TOLERANCE:
        return None
    tolerance = (runner.verdict or {}).get("tolerance") or exact_tolerance(Path(side.model), images, runner.threads,
                                                                            runner.name)
    if changed["error"] <= tolerance:
        return None
    say(f"{side.label}: reading its layers changes what {side.runtime} computes (worst-channel error "
        f"{changed['error']:.3g}, cosine {changed['cosine']:.4f}); locating the departure by compiling prefixes")
    found = {"side": side.label, "runtime": side.runtime, "form": runner.form, "changed": changed,
             "tolerance": tolerance}
    found.update(locate_departure(side, runner.form, images, tolerance, folder))
    return found


def locate_departure(side, form: str, images: np.ndarray, tolerance: float, folder: Path) -> dict:
    """The first of `side`'s tensors (graph order) whose prefix, compiled in `form`, departs from the exact
    function beyond `tolerance`, by bisection (the whole graph departs). {"departs_at": row or None,
    "prefixes": every prefix measured}."""
    import onnx

    graph = onnx.load(str(side.model))
    candidates = [name for name in side.layers] + [o.name for o in graph.graph.output]
    measured: dict[int, dict] = {}

    def departs(index: int) -> bool:
        if index not in measured:
            measured[index] = _prefix_error(graph, candidates[index], side.runtime, form, images, folder)
        return measured[index]["error"] > tolerance

    low, high = 0, len(candidates) - 1
    if not departs(high):
        return {"departs_at": None, "prefixes": list(measured.values())}
    while low < high:
        middle = (low + high) // 2
        if departs(middle):
            high = middle
        else:
            low = middle + 1
    name = candidates[high]
    info = side.layers.get(name, {"op": "output", "node": name})
    return {"departs_at": {"tensor": name, "op": info["op"], "node": info.get("node", name), **measured[high]},
            "prefixes": [measured[i] for i in sorted(measured)]}


def _prefix_error(graph, tensor: str, runtime: str, form: str, images: np.ndarray, folder: Path) -> dict:
    """The prefix of `graph` ending at `tensor`, run in `form` on `runtime` and by the reference kernels."""
    import onnx
    from onnx.utils import Extractor

    from ..runtime.onnxruntime import OrtRunner
    from ..runtime.trust import channel_error

    path = folder / "prefix.onnx"
    try:
        prefix = Extractor(graph).extract_model([graph.graph.input[0].name], [tensor])
        onnx.save(prefix, str(path))
        if runtime == "openvino":
            from ..runtime.openvino import OpenVinoRunner

            got = OpenVinoRunner(path, form=form).run(images)
        else:
            got = OrtRunner(path, form=form).run(images)
        reference = OrtRunner(path, form="reference").run(images)
    except Exception as e:  # a prefix that cannot be cut or compiled is no evidence either way
        return {"tensor": tensor, "error": 0.0, "cosine": 1.0, "skipped": f"{type(e).__name__}: {str(e)[:120]}"}
    return {"tensor": tensor, **channel_error(reference, got)}
