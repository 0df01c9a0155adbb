"""Quantization: PTQ for TensorRT (ModelOpt) and the CPU (ONNX Runtime), the calibration search, the
quantization groups TensorRT fuses, sensitivity and the accuracy budget, and QAT (routes 1 and 2)."""
from ...lazy import exports

PUBLIC = {
    "QuantizeSpec": "ptq", "quantize_onnx": "ptq", "align_concat_scales": "ptq",
    "run_ptq": "route", "check_variants": "route", "quantized_name": "route",
    "SensitivityOptions": "sensitivity", "BudgetSpec": "sensitivity", "measure_sensitivity": "sensitivity",
    "fit_budget": "sensitivity",
    "quantization_groups": "groups", "dequantize_groups": "groups", "search_quantized": "scale_search",
    "align_conv_channels": "cpu_layout", "activation_histograms": "histograms",
    "run_qat": "qat", "insert_quantizers": "qat", "make_start": "qat", "read_start": "qat_start",
    "pair_start": "qat_start",
}
__all__ = list(PUBLIC)
__getattr__, __dir__ = exports(__name__, PUBLIC)
