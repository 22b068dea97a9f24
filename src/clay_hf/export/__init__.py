"""The Clay encoder for serving without PyTorch: ONNX export (`pip install clay_hf[onnx]`)."""

from .onnx import OnnxEncoder, export_onnx, max_difference

__all__ = ["OnnxEncoder", "export_onnx", "max_difference"]
