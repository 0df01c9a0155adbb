"""What `deploy --implicit` checks of a calibration cache before it bundles it.

- its calibrator: trtexec's --calib reads a cache through an entropy calibrator, which ignores a cache written by
  another algorithm (the build would then calibrate on nothing);
- its coverage: the share of the model's activations it gives a scale (a cache made for another model covers
  none of them, and TensorRT would run every layer in FP16 with no word said);
- its measurement: the emulated drop `calib-cache` recorded beside it (cache_emulation.py), shown in the console
  and the bundle's record; an absurd one is refused.
Refusals of coverage and measurement give way to `trust` (--trust-cache); a wrong calibrator never does.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from ...errors import OrinflowError
from ...io import record_path
from .cache_emulation import describe
from .calib_cache import CACHE_HEADER, activation_tensors, calibrator, read_cache

LOW_COVERAGE = 0.5


def check_implicit_cache(cache: Path, model: Path, trust: bool, say=print) -> dict:
    """The bundle record's entry for the cache: coverage and the recorded measurement, refusals raised."""
    header, scales = read_cache(cache)
    if calibrator(header) != calibrator(CACHE_HEADER):
        raise OrinflowError(f"{cache} was written by TensorRT's {calibrator(header)}, but trtexec --calib reads it "
                            f"with {calibrator(CACHE_HEADER)}, which ignores such a cache: make it with "
                            "`orinflow calib-cache`")
    activations = activation_tensors(onnx.load(str(model)))
    covered = sum(name in scales for name in activations)
    coverage = covered / max(len(activations), 1)
    found = {"calibrator": calibrator(header), "tensors": len(scales), "coverage": coverage,
             "covered": covered, "activations": len(activations), "emulated": _recorded_measurement(cache)}
    if coverage == 0:
        _refuse_unless(trust, f"{cache} covers none of {model.name}'s {len(activations)} activations: it was made "
                       "for another model")
    elif coverage < LOW_COVERAGE:
        say(f"note: {cache.name} covers {covered} of {model.name}'s {len(activations)} activations; TensorRT runs "
            "the rest in FP16")
    emulated = found["emulated"]
    if emulated.get("kind") in ("metric", "agreement"):
        say(f"calibration cache {cache.name}, emulated by calib-cache on {emulated['images']} images: "
            f"{describe(emulated)}")
        if emulated.get("absurd"):
            _refuse_unless(trust, f"the calibration cache {cache} lost too much when emulated ({describe(emulated)})")
    else:
        say(f"note: {cache.name} carries no measurement ({emulated.get('why')}): make it with `orinflow calib-cache "
            "-m FP32.onnx` to see what its ranges cost")
    return found


def _refuse_unless(trust: bool, reason: str) -> None:
    if not trust:
        raise OrinflowError(f"{reason}; give --trust-cache to bundle it anyway")


def _recorded_measurement(cache: Path) -> dict:
    """The "emulated" entry of the cache's calib-cache record, or why there is none."""
    try:
        record = json.loads(record_path(cache).read_text())
    except (OSError, ValueError):
        return {"kind": "not measured", "why": "no calib-cache record beside it"}
    if not isinstance(record, dict) or record.get("command") != "calib-cache" or "emulated" not in record:
        return {"kind": "not measured", "why": "its record holds no measurement"}
    return record["emulated"] if isinstance(record["emulated"], dict) else {"kind": "not measured",
                                                                             "why": "its record is damaged"}
