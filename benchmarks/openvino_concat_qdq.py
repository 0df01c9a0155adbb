"""A minimal reproduction of the OpenVINO CPU defect that orinflow's integer-kernel check catches (for an upstream
report): Concat -> QuantizeLinear/DequantizeLinear (int8, zero point 0) -> Conv with int8 Q/DQ weights.

    python benchmarks/openvino_concat_qdq.py            # prints the graph's function on ONNX Runtime and OpenVINO
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/openvino_concat_qdq.py

The convolution's weights are the identity, so the output is the dequantized concatenation itself: every value a
multiple of the activation scale. OpenVINO 2026.4.1's CPU plugin, on a 2-core AMD EPYC with AVX-512 VNNI and no
AMX (also when oneDNN is capped at AVX2 or AVX-512 without VNNI), quantizes the concatenated tensor with a step of
1.0 instead of the scale, in every case below marked "defect". The same graph without the Concat, with uint8
activations (zero point 128, the same function), or with float weights is computed correctly; so is the same
graph built from OpenVINO's own FakeQuantize op. ONNX Runtime computes all of them as ONNX defines them.
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def graph(scale: float, concat: bool = True, unsigned: bool = False, quantized_weights: bool = True) -> onnx.ModelProto:
    zero = np.array(128 if unsigned else 0, np.uint8 if unsigned else np.int8)
    weight = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "xs"), numpy_helper.from_array(zero, "xz")]
    if concat:
        inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 4, 4]) for name in ("a", "b")]
        nodes = [helper.make_node("Concat", ["a", "b"], ["x"], axis=1)]
    else:
        inputs, nodes = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])], []
    nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    if quantized_weights:
        inits += [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full(2, 1 / 127, np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(2, np.int8), "wz")]
        nodes += [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0)]
    else:
        inits.append(numpy_helper.from_array(weight, "wd"))
    nodes.append(helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[1, 1]))
    model = helper.make_model(helper.make_graph(nodes, "concat_qdq_conv", inputs,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def run_both(model: onnx.ModelProto, feeds: dict) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    import openvino as ov

    data = model.SerializeToString()
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return expected, compiled(feeds)[compiled.outputs[0]]


def main() -> int:
    import openvino as ov

    values = (np.arange(16, dtype=np.float32) - 8).reshape(1, 1, 4, 4) * 0.25  # -2.0 .. 1.75
    print(f"OpenVINO {ov.__version__}; input a = {values.ravel().tolist()}, b = 3a")
    found = 0
    for name, scale, options in (("int8 after Concat, scale 0.5", 0.5, {}),
                                 ("int8 after Concat, scale 2.0", 2.0, {}),
                                 ("uint8 zero point 128 after Concat", 0.5, {"unsigned": True}),
                                 ("int8 without Concat", 0.5, {"concat": False}),
                                 ("int8 after Concat, float weights", 0.5, {"quantized_weights": False})):
        model = graph(scale, **options)
        feeds = {"a": values, "b": 3 * values} if options.get("concat", True) else {
            "x": np.concatenate([values, 3 * values], 1)}
        expected, got = run_both(model, feeds)
        wrong = not np.allclose(expected, got, atol=1e-5)
        found += wrong
        print(f"\n{name}: {'defect' if wrong else 'correct'}")
        print(f"  ONNX Runtime, channel a / scale: {(expected[0, 0].ravel() / scale).round(3).tolist()}")
        print(f"  OpenVINO,     channel a / scale: {(got[0, 0].ravel() / scale).round(3).tolist()}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
