"""ONNX Runtime static quantization for the cpu target, run as `python -m` in its own process.

ModelOpt patches ONNX Runtime's calibrators when it is imported; a fresh interpreter keeps
the cpu target on ONNX Runtime's own code whatever ran before in the parent.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx


def main(job: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import quietly
    from .ptq import CalibReader, calibration_stride

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
