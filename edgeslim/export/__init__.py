"""Export to ONNX (opset from the device, simplified, parity-checked), TensorRT and INT8."""
from .onnx import ExportResult, check_channels, export_onnx, graph_summary, parity
from .pipeline import choose_opset, export_for_device

__all__ = ["ExportResult", "export_onnx", "parity", "graph_summary", "check_channels", "export_for_device",
           "choose_opset"]
