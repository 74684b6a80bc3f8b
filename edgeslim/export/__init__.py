"""Export to ONNX (and TensorRT) for a target device."""
from .onnx import ExportResult, export_onnx, parity

__all__ = ["ExportResult", "export_onnx", "parity"]
