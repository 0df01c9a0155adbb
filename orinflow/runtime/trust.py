"""An integer path is trusted only after it has been measured, on this machine, to agree with the exact function.

A runtime may run a Q/DQ model's convolutions on integer kernels. Whether their results are the model's depends
on the CPU and on the runtime's build, not on the file: without VNNI or AMX, 8-bit kernels add u8 x s8 pairs
in 16 bits and saturate; OpenVINO 2026.4's CPU plugin computes a signed activation quantizer that follows a
Concat with a step of 1.0 instead of its scale on CPUs with AVX-512 VNNI and no AMX (docs/runtimes.md).
CPU flags cannot foresee either. So before a runtime's integer kernels give a figure, the same few images run
through them and through the exact function, and the integer path is used only where they agree:

- the reference is ONNX Runtime with graph optimizations off: the graph's operators one by one, in float;
- the exact implementations are the model as float kernels run it with every Q/DQ computed as written
  (ONNX Runtime with its Q/DQ fusions off; OpenVINO with the weights' Q/DQ folded into float weights). Their
  distance from the reference is the noise floor: float results that differ in the last bit land on the other
  side of a rounding step here and there, and the next layers carry it;
- each output's error is measured per channel (the smallest non-batch axis of a detector's head output, the
  whole output otherwise) as the RMS difference over the channel's spread in the reference; a path's error is
  its worst channel's;
- an integer path agrees when its error is at most RATIO times the floor's (and always when under
  MIN_TOLERANCE). Correct integer kernels measured 0.7 to 2.3 times the floor on yolov5n, the demo detector and
  ResNet-20; saturating or defective ones 4.7 to 200 times (docs/runtimes.md).

The verdict is cached per CPU (model, flags, and oneDNN's ISA cap), runtime and version, and model file, so
each model costs one check per machine. `--int8-kernels`: auto (the first integer form that agrees, else
the exact path), integer (the integer kernels as the graph is written, with the measured disagreement said
where there is one), exact (the exact path, unmeasured).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import OrinflowError

INT8_KERNELS = ("auto", "integer", "exact")
INTEGER_RUNTIMES = ("onnxruntime", "openvino")
RATIO = 3.0
MIN_TOLERANCE = 0.05
RULE = 1  # bump when the rule changes: verdicts cached under another rule are measured again
PROBE_PIXELS = 2 ** 20  # about a megapixel of input: 4 images at 640, 16 at 256, 64 (the most) at 32
PROBE_LIMITS = (4, 64)
REFERENCE = "ONNX Runtime, graph optimizations off"
ASKED_EXACT = {"mode": "exact", "used": "exact", "kind": "exact", "reason": "asked (--int8-kernels exact)"}


def check_int8_kernels(value: str) -> str:
    if value not in INT8_KERNELS:
        raise OrinflowError(f"unknown --int8-kernels {value!r}; choose one of {', '.join(INT8_KERNELS)}")
    return value


def probe_count(imgsz) -> int:
    """How many images the check runs: enough pixels that each channel's spread is a steady yardstick."""
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return int(np.clip(round(PROBE_PIXELS / max(1, height * width)), *PROBE_LIMITS))


# ---------------------------------------------------------------- measuring
def channel_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """The worst channel's RMS error over its spread in the reference, over all outputs, and the outputs'
    lowest cosine."""
    worst, cosine = 0.0, 1.0
    for ref, got in zip(reference, candidate):
        ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if ref.shape != got.shape:
            return {"error": float("inf"), "cosine": 0.0}
        flat_ref, flat_got = ref.ravel(), got.ravel()
        norms = np.sqrt((flat_ref @ flat_ref) * (flat_got @ flat_got))
        cosine = min(cosine, 1.0 if norms == 0 else float(flat_ref @ flat_got / norms))
        axis = 1 + int(np.argmin(ref.shape[1:])) if ref.ndim > 2 else None
        rows_ref = np.moveaxis(ref, axis, 0).reshape(ref.shape[axis], -1) if axis else flat_ref[None]
        rows_got = np.moveaxis(got, axis, 0).reshape(got.shape[axis], -1) if axis else flat_got[None]
        error = np.sqrt(((rows_ref - rows_got) ** 2).mean(1))
        spread = np.maximum(rows_ref.std(1), 1e-6 * max(np.abs(flat_ref).max(initial=0.0), 1e-30))
        worst = max(worst, float((error / spread).max(initial=0.0)))
    return {"error": worst, "cosine": cosine}


def reference_outputs(path: Path, probe: np.ndarray, threads: int) -> list[np.ndarray]:
    from .onnxruntime import OrtRunner

    return OrtRunner(path, threads, form="reference").run(probe)


def exact_implementations(path: Path, threads: int):
    """(name, function running a batch) of each exact implementation, cheapest first; OpenVINO's where it
    imports."""
    from .onnxruntime import OrtRunner

    yield "onnxruntime, Q/DQ fusions off", OrtRunner(path, threads, form="exact").run
    try:
        from .openvino import OpenVinoRunner, import_openvino

        import_openvino()
    except OrinflowError:
        return
    yield "openvino, weights folded", OpenVinoRunner(path, threads, form="exact").run


def measure(path: Path, integer_forms: dict[str, Callable[[np.ndarray], list[np.ndarray]]], probe: np.ndarray,
            threads: int) -> dict:
    """The integer forms' errors against the reference, in order until one agrees, and the tolerance.

    The floor is measured only as far as it is needed: a form within MIN_TOLERANCE agrees at once; otherwise
    each exact implementation in turn widens the tolerance, and a form disagrees only beyond all of them."""
    reference = reference_outputs(path, probe, threads)
    implementations = exact_implementations(path, threads)
    floors: dict[str, dict] = {}
    tolerance = MIN_TOLERANCE
    forms: dict[str, dict] = {}
    for name, run in integer_forms.items():
        found = channel_error(reference, run(probe))
        while found["error"] > tolerance:
            nxt = next(implementations, None)
            if nxt is None:
                break
            floors[nxt[0]] = channel_error(reference, nxt[1](probe))
            tolerance = max(RATIO * max(f["error"] for f in floors.values()), MIN_TOLERANCE)
        found["agrees"] = found["error"] <= tolerance
        forms[name] = found
        if found["agrees"]:
            break
    return {"images": int(len(probe)), "reference": REFERENCE, "floor": floors, "tolerance": tolerance,
            "forms": forms}


def exact_tolerance(path: Path, probe: np.ndarray, threads: int, judged: str) -> float:
    """The tolerance the rule allows one model on `probe` when no verdict measured it, from the floor of the
    exact implementations other than `judged`'s runtime (a runtime's own exact path does not vouch for it)."""
    reference = reference_outputs(path, probe, threads)
    floors = [channel_error(reference, run(probe))["error"] for name, run in exact_implementations(path, threads)
              if not name.startswith(judged)]
    return max(RATIO * max(floors, default=0.0), MIN_TOLERANCE)


# ---------------------------------------------------------------- deciding
def settle(path: Path, runtime: str, version: str, integer_forms: dict[str, Callable], probe: np.ndarray,
           mode: str, threads: int, cache: bool = True) -> dict:
    """The verdict for one model on one runtime: which form runs ("used": an integer form or "exact") and why.

    `integer_forms`: the runtime's integer forms in order of preference, name -> a function running the probe.
    mode "exact" measures nothing; "auto" and "integer" measure (or read the cache)."""
    if mode == "exact":
        return dict(ASKED_EXACT)
    from ..io import read_cached, write_cached

    entry = cache_file(path, runtime, version) if cache else None
    measured = read_cached(entry, lambda message: None) if entry else None
    order = list(integer_forms)
    if usable(measured, order):
        measured["cached"] = True
    else:
        measured = {"rule": RULE, "runtime": runtime, "version": version, "cpu": cpu_key()["model"],
                    **measure(path, integer_forms, probe, threads)}
        if entry:
            write_cached(entry, measured, lambda message: None)
    return decide(measured, order, mode)


def usable(measured: dict | None, order: list[str]) -> bool:
    """A cached measurement of this rule whose forms are the first of `order` (measure stops at one that agrees)."""
    forms = list((measured or {}).get("forms", {}))
    return bool(forms) and measured.get("rule") == RULE and forms == order[:len(forms)]


def decide(measured: dict, order: list[str], mode: str) -> dict:
    forms = measured["forms"]
    first = order[0]
    agreeing = [name for name in order if name in forms and forms[name]["agrees"]]
    if mode == "integer":
        used, reason = first, ("asked (--int8-kernels integer); measured to agree" if forms[first]["agrees"]
                               else "asked (--int8-kernels integer) although it disagrees with the exact function")
    elif agreeing:
        used = agreeing[0]
        reason = "measured to agree with the exact function" + ("" if used == first else
                                                                f" ({first}: {describe(forms[first], measured)})")
    else:
        used, reason = "exact", f"its integer kernels disagree with the exact function here " \
                                f"({describe(forms[first], measured)})"
    kind = "exact" if used == "exact" else "integer"
    return {"mode": mode, "used": used, "kind": kind, "reason": reason, **measured}


def describe(found: dict, measured: dict) -> str:
    """One measurement in words: 'cosine 0.990, worst-channel error 1.00 against a tolerance of 0.23'."""
    return (f"cosine {found['cosine']:.3f}, worst-channel error {found['error']:.3g} against a tolerance of "
            f"{measured['tolerance']:.3g}, on {measured['images']} images")


def disagreement(verdict: dict | None) -> str | None:
    """What a record and the console say when the integer path used is not the model's function."""
    if not verdict or verdict["kind"] != "integer" or verdict["forms"][verdict["used"]]["agrees"]:
        return None
    return describe(verdict["forms"][verdict["used"]], verdict)


# ---------------------------------------------------------------- the cache
def cpu_key() -> dict:
    """What the verdict depends on besides the model and runtime: the CPU model, its flags, and the ISA cap
    oneDNN honours (ONEDNN_MAX_CPU_ISA makes OpenVINO run another instruction set on the same CPU)."""
    import os

    from .cpu import cpu_flags, cpu_model

    caps = {name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if os.environ.get(name)}
    return {"model": cpu_model(), "flags": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16],
            "caps": caps}


def model_digest(path: Path) -> str:
    """sha256 of the ONNX file and of any external data files it names."""
    import onnx

    digest = hashlib.sha256(Path(path).read_bytes())
    graph = onnx.load(str(path), load_external_data=False)
    locations = sorted({entry.value for tensor in graph.graph.initializer for entry in tensor.external_data
                        if entry.key == "location"})
    for location in locations:
        target = Path(path).parent / location
        if target.is_file():
            digest.update(target.read_bytes())
    return digest.hexdigest()


def cache_file(path: Path, runtime: str, version: str) -> Path:
    from ..config import workspace

    key = json.dumps({"rule": RULE, "runtime": runtime, "version": version, "cpu": cpu_key(),
                      "model": model_digest(path)}, sort_keys=True)
    return workspace() / "cache" / "int8_kernels" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
