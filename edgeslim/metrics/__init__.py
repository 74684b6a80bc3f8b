"""Cost metrics: MACs/FLOPs, parameters and memory."""
from .count import CountResult, count
from .onnx_count import OnnxCount, count_onnx

__all__ = ["CountResult", "count", "OnnxCount", "count_onnx"]
