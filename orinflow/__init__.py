"""orinflow: vision models to fast, accurate INT8 ONNX for TensorRT on Jetson Orin."""
__version__ = "0.1.0"
