"""ONNX export with a parity check against PyTorch.

The TorchScript-based exporter (``dynamo=False``) is used because it can write any opset a device
needs; torch 2.14's dynamo exporter starts at opset 18, which JetPack 5 (TensorRT 8.5) rejects.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

__all__ = ["ExportResult", "export_onnx", "parity"]


@dataclass
class ExportResult:
    path: str
    opset: int
    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    simplified: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ort_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def parity(model: nn.Module, path: str, example: torch.Tensor, trials: int = 3, seed: int = 0) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on ``trials`` random inputs shaped like ``example``; worst-case errors."""
    sess = _ort_session(path)
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "cosine": 1.0}
    for _ in range(trials):
        x = torch.randn(example.shape, generator=gen)
        ref = model(x).float().numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        diff = np.abs(ref - got)
        worst["max_abs_diff"] = max(worst["max_abs_diff"], float(diff.max()))
        worst["max_rel_diff"] = max(worst["max_rel_diff"], float(diff.max() / (np.abs(ref).max() + 1e-12)))
        cos = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-12))
        worst["cosine"] = min(worst["cosine"], cos)
    return worst


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                simplify: bool = True, tolerance: float = 1e-4) -> ExportResult:
    """Export ``model`` (eval mode, static shapes) and check it against PyTorch in ONNX Runtime.

    Raises ``RuntimeError`` when the exported graph's relative error exceeds ``tolerance``.
    If the simplified graph fails the check, the unsimplified one is kept and ``note`` says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    raw = onnx.load(str(path))
    nodes_before = len(raw.graph.node)
    checked = parity(model, str(path), example)
    if checked["max_rel_diff"] > tolerance:
        raise RuntimeError(f"exported ONNX differs from PyTorch: relative error {checked['max_rel_diff']:.2e} "
                           f"> tolerance {tolerance:.0e}")
    simplified, note = False, ""
    if simplify:
        import onnxslim

        slim = onnxslim.slim(raw)
        candidate = path.with_suffix(".slim.onnx")
        onnx.save(slim, str(candidate))
        slim_check = parity(model, str(candidate), example)
        if slim_check["max_rel_diff"] <= tolerance:
            candidate.replace(path)
            checked, simplified = slim_check, True
        else:
            candidate.unlink()
            note = (f"simplified graph failed the parity check (relative error {slim_check['max_rel_diff']:.2e}); "
                    "kept the unsimplified export")
    nodes_after = len(onnx.load(str(path)).graph.node)
    return ExportResult(str(path), opset, nodes_before, nodes_after, simplified=simplified, note=note, **checked)
