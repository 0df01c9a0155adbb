"""The cpu target's channel re-layout: exact outputs, the layouts MLAS's fast kernels need, honest 2:4 counts."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from orinflow.models import load_model
from orinflow.optimize.quantize.cpu_layout import align_conv_channels, quantize_before_space_to_depth

RNG = np.random.default_rng(0)


def _conv(name, x, y, out_ch, in_ch, k, stride=1, pad=0, bias=True, **attrs):
    inits = [numpy_helper.from_array(RNG.normal(size=(out_ch, in_ch, k, k)).astype(np.float32) * 0.2, f"{name}_W")]
    inputs = [x, f"{name}_W"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=out_ch).astype(np.float32), f"{name}_B"))
        inputs.append(f"{name}_B")
    node = helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[k, k], strides=[stride] * 2,
                            pads=[pad] * 4, **attrs)
    return node, inits


def _stem_and_head_model(side=32, batch=1):
    """A YOLOv5-like stem (3 channels, 6x6 stride 2), a 3x3/2 conv it cannot fold, a head with 10 filters."""
    stem, a = _conv("stem", "images", "s", 16, 3, 6, 2, 2)
    act = [helper.make_node("Sigmoid", ["s"], ["sg"], name="sig"), helper.make_node("Mul", ["s", "sg"], ["a"], name="mul")]
    side_conv, b = _conv("odd", "images", "o", 16, 3, 3, 2, 1)
    dilated, c = _conv("dilated", "a", "d", 8, 16, 3, 1, 2, dilations=[2, 2])
    head, d = _conv("head", "d", "h", 10, 8, 1, bias=False)
    graph = helper.make_graph(
        [stem, *act, side_conv, dilated, head], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, list("nchw")),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, list("nchw"))], a + b + c + d)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})


def test_alignment_keeps_every_output_and_reaches_the_kernel_layout():
    model = _stem_and_head_model()
    x = RNG.random((1, 3, 32, 32), dtype=np.float32)
    before = _run(model, x)
    changed = align_conv_channels(model)
    onnx.checker.check_model(model)
    after = _run(model, x)
    for b, a in zip(before, after):
        assert b.shape == a.shape and np.allclose(b, a, atol=1e-4)
    assert changed == {"stem": {"space_to_depth": 2, "output_channels": 16},
                       "dilated": {"space_to_depth": 0, "output_channels": 8},
                       "head": {"space_to_depth": 0, "output_channels": 10}}
    weights = {t.name: t.dims for t in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    for name in ("stem", "dilated", "head"):  # MLAS's symmetric conv: Cin % 4 == 0, Cout % 4 == 0 and >= 16
        out_ch, in_ch = weights[convs[name].input[1]][:2]
        assert in_ch % 4 == 0 and out_ch % 4 == 0 and out_ch >= 16
    assert weights[convs["odd"].input[1]] == [16, 3, 3, 3]  # 3x3/2 does not fold; left as it was
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("SpaceToDepth") == 1 and ops.count("Slice") == 2


def test_space_to_depth_needs_a_divisible_input():
    assert align_conv_channels(_stem_and_head_model(side=30))["stem"]["space_to_depth"] == 2
    assert align_conv_channels(_stem_and_head_model(batch="N"))["stem"]["space_to_depth"] == 2  # dynamic batch
    odd = _stem_and_head_model(side=31)  # folding 6x6/2 needs H and W divisible by 2
    changed = align_conv_channels(odd)
    assert "stem" not in changed and "head" in changed
    assert next(n for n in odd.graph.node if n.name == "stem").input[0] == "images"


def test_quantize_moves_before_space_to_depth_exactly():
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(7, np.uint8), "zero")
    nodes = [helper.make_node("SpaceToDepth", ["images"], ["moved"], name="s2d", blocksize=2),
             helper.make_node("QuantizeLinear", ["moved", "scale", "zero"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, zero],
                              value_info=[helper.make_tensor_value_info("moved", TensorProto.FLOAT, [1, 12, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    before = _run(model, x)[0]
    assert quantize_before_space_to_depth(model) == 1
    producer = {o: n for n in model.graph.node for o in n.output}
    s2d = next(n for n in model.graph.node if n.op_type == "SpaceToDepth")
    assert producer[s2d.input[0]].op_type == "QuantizeLinear"  # the move now runs on uint8
    assert np.array_equal(before, _run(model, x)[0])


@pytest.fixture(scope="module")
def demo_quantized(fp32, calib, demo_int8):
    return fp32, calib, demo_int8("max", "cpu")


def test_cpu_target_pads_the_detect_convs_and_keeps_outputs(demo_quantized, tmp_path):
    fp32, calib, record = demo_quantized
    aligned = record["channel_aligned_convs"]
    assert aligned and all(info["output_channels"] % 4 or info["output_channels"] < 16 for info in aligned.values())
    model = onnx.load(record["model"])
    assert {p.key for p in model.metadata_props} >= {"orinflow.channel_aligned"}
    assert load_model(record["model"]).num_params() == fp32.num_params()  # zero filters are not parameters
    # The re-layout is exact in FP32: the padded graph's detections equal the export's.
    reference = _run(onnx.load(str(fp32.path)), calib[:1])[0]
    padded = onnx.load(str(fp32.path))
    align_conv_channels(padded)
    assert np.allclose(reference, _run(padded, calib[:1])[0], atol=1e-3)


def test_padding_filters_do_not_count_as_2to4_layers(demo_quantized, demo_int8):
    fp32, calib, record = demo_quantized
    trt = demo_int8("max", "tensorrt")
    assert record["sparsity"]["eligible_layers"] == trt["sparsity"]["eligible_layers"]
