"""End-to-end check of the engine on one model: prune, prove, run forward/backward, export ONNX.

Used by the zoo tests and by ``benchmarks/coverage.py``. A check on freshly initialised weights can
pass vacuously (torchvision zero-initialises some classifier heads, ConvNeXt scales its blocks by
1e-6, BatchNorm statistics start at 0/1), so :func:`randomize_` first gives every parameter and
BatchNorm statistic non-trivial values: the proof then really compares two computations.
"""
from __future__ import annotations

import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .graph import UnsupportedOpError

__all__ = ["randomize_", "check_slimming"]


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and running statistic random, well-scaled values (in place)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = max(1, p[0].numel())
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        elif name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)   # norm scales in [0.5, 1.5)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)  # biases
    for name, b in model.named_buffers():
        if not b.is_floating_point():
            continue
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model


def check_slimming(model: nn.Module, example: torch.Tensor, method: str = "l1",
                   target: Mapping[str, float] | None = None, export: bool = True,
                   workdir: str | Path | None = None) -> dict[str, Any]:
    """Prune ``model`` (proof included), then run the slim model forward and backward and export it
    to ONNX (checked in ONNX Runtime). ``status``: ``passed``, ``refused`` (a clear error naming
    why the engine will not prune it) or ``failed`` (anything else: a bug)."""
    from .prune import prune

    out: dict[str, Any] = {"status": "failed"}
    t0 = time.perf_counter()
    try:
        result = prune(model, example, method=method, target=target or {"channels": 0.5}, progress=False)
    except (UnsupportedOpError, ValueError) as exc:
        out.update(status="refused", reason=f"{type(exc).__name__}: {str(exc).strip()}", wall_s=time.perf_counter() - t0)
        return out
    except Exception as exc:  # the check reports every other failure instead of stopping a zoo sweep
        out.update(reason=f"prune: {type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-3))
        return out
    out.update(trace_s=result.graph.trace_s, equivalence_error=result.equivalence_error, achieved=result.achieved,
               groups=len(result.graph.groups), prunable_groups=len(result.graph.prunable_groups),
               dense_macs=result.dense["macs"], slim_macs=result.slim["macs"])
    slim = result.model
    try:
        slim.train()  # training mode, with a batch of two (BatchNorm needs more than one value per channel)
        batch = torch.cat([example, torch.randn_like(example)])
        loss = sum(t.float().pow(2).mean() for t in torch.utils._pytree.tree_leaves(slim(batch))
                   if isinstance(t, torch.Tensor))
        loss.backward()
        if not all(p.grad is not None and torch.isfinite(p.grad).all() for p in slim.parameters() if p.requires_grad):
            raise RuntimeError("backward left parameters without finite gradients")
        slim.eval()
        if export:
            from ..export import export_onnx

            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                onnx = export_onnx(slim, example, Path(tmp) / "slim.onnx", simplify=False)
            out["onnx_max_rel_diff"] = onnx.max_rel_diff
    except Exception as exc:
        out.update(reason=f"slim model: {type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-3))
        return out
    out.update(status="passed", wall_s=time.perf_counter() - t0)
    return out
