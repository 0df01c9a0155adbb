"""ONNX Runtime static quantization for the cpu target, run as `python -m` in its own process.

ModelOpt patches ONNX Runtime's calibrators when it is imported; a fresh interpreter keeps
the cpu target on ONNX Runtime's own code whatever ran before in the parent. The worker imports
numpy, onnx and ONNX Runtime only (no torch), so the process starts in about a second.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx

CALIB_CHUNK = 16  # images per calibration pass: bounds the activations held in memory


class CalibReader:
    """ONNX Runtime CalibrationDataReader over a (N,3,H,W) array, one image per call.

    `set_range` lets ONNX Runtime calibrate a slice at a time (its CalibStridedMinMax option,
    which works for every method), so activations of only `stride` images are held at once.
    """

    def __init__(self, input_name: str, images: np.ndarray):
        self.input_name, self.images = input_name, images
        self.index, self.end = 0, len(images)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.images))

    def get_next(self):
        if self.index >= self.end:
            return None
        self.index += 1
        return {self.input_name: np.ascontiguousarray(self.images[self.index - 1:self.index], dtype=np.float32)}

    def rewind(self):
        self.index, self.end = 0, len(self.images)


def calibration_stride(count: int, limit: int = CALIB_CHUNK) -> int:
    """The largest slice size up to `limit` that divides the set (ONNX Runtime requires it)."""
    return max(d for d in range(1, min(limit, count) + 1) if count % d == 0)


def main(job: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..common import quietly

    methods = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    calib = np.load(job["calib"], mmap_mode="r")
    input_name = onnx.load(job["src"], load_external_data=False).graph.input[0].name
    prepared = Path(job["work"]) / "prepared.onnx"
    with quietly():
        quant_pre_process(job["src"], str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), job["out"], CalibReader(input_name, calib), quant_format=QuantFormat.QDQ,
            # U8 activations with S8 weights: the pairing ORT's x86 kernels fuse (S8S8 runs slower than FP32).
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            # 7-bit weights: a u8 x s8 pair sum then fits 16 bits, so CPUs without VNNI do not saturate
            reduce_range=job["reduce_range"],
            calibrate_method=methods[job["method"]], nodes_to_exclude=job["exclude"],
            extra_options={"CalibStridedMinMax": calibration_stride(len(calib), job["chunk"]),
                           "CalibPercentile": job["percentile"], "WeightSymmetric": True,
                           "ActivationSymmetric": False},
        )


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except Exception as e:  # one line for the parent to show
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"{type(e).__name__}: {first}", file=sys.stderr)
        sys.exit(1)
