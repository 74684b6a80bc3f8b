"""Roofline latency per layer and a memory budget for any model on any device profile.

Latency of a layer = max(compute time, memory time), where compute time = 2 x MACs / peak FLOPS at
the precision and memory time = (input + output activations + weights) bytes / memory bandwidth.
The sum over layers is a *lower bound*: peak figures, no kernel-launch overhead, and elementwise
operations (BN, activations, residual additions) assumed fused into the layer that produces their
input, as TensorRT does. Use it to compare models and devices, not as a promise of milliseconds.

Memory budget = weights + peak activations + the TensorRT builder workspace, against the device's
memory (shared with the OS on Jetson boards).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .registry import DeviceProfile, get_device

__all__ = ["Estimate", "estimate_model", "default_workspace_mb", "default_precision", "BYTES_PER_ELEMENT"]

BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def default_precision(device: DeviceProfile) -> str:
    """FP16 on NVIDIA devices (every profile here runs it at least as fast as FP32), FP32 on CPUs."""
    return "fp16" if device.kind != "cpu" and device.supports("fp16") else "fp32"


def default_workspace_mb(device: DeviceProfile) -> int:
    """TensorRT builder workspace: 1 GiB, or an eighth of a small device's memory."""
    if device.tensorrt is None:
        return 0
    return int(min(1024, device.memory_gb * 1024 / 8))


@dataclass
class Estimate:
    device: str
    precision: str
    batch: int
    latency_ms: float
    layers: list[dict[str, Any]]
    memory: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    assumptions: str = ("roofline lower bound: per layer max(2*MACs/peak, bytes/bandwidth) at dense data-sheet peaks; "
                        "no launch overhead; elementwise ops fused into their producer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numel(shape) -> int:
    return math.prod(shape) if shape else 0


def estimate_model(model: nn.Module, example: torch.Tensor, device: str | DeviceProfile, precision: str | None = None,
                   workspace_mb: int | None = None, cost=None) -> Estimate:
    """Estimate ``model``'s latency and memory on ``device`` at ``precision`` (default: the device's usual one).

    ``cost`` may be an ``edgeslim.count`` result for the same model and input, to avoid counting twice.
    """
    from ..metrics import count

    device = get_device(device)
    precision = precision or default_precision(device)
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_ELEMENT)}, not {precision!r}")
    warnings = []
    if not device.supports(precision):
        warnings.append(f"{device.name} has no fast {precision} path; estimated at its FP32 peak")
    cost = cost if cost is not None else count(model, example)
    bpe = BYTES_PER_ELEMENT[precision]
    flops, bandwidth = device.peak_flops(precision), device.mem_bandwidth_gbs * 1e9
    layers = []
    for layer in cost.layers:
        if not layer["macs"]:
            continue  # BN and other parameter-only layers: fused into the convolution before them
        calls = max(1, layer.get("calls", 1))
        if layer.get("input_shape") is None or layer["output_shape"] is None:
            warnings.append(f"layer {layer['name']}: activation sizes unknown (a bare layer as the model?); "
                            "its memory time counts weights only")
        act = (_numel(layer.get("input_shape")) + _numel(layer["output_shape"])) * calls
        moved = act * bpe + layer["params"] * bpe
        compute_ms = 2 * layer["macs"] / flops * 1e3
        memory_ms = moved / bandwidth * 1e3
        layers.append({"name": layer["name"], "type": layer["type"], "macs": layer["macs"], "bytes": int(moved),
                       "compute_ms": compute_ms, "memory_ms": memory_ms, "latency_ms": max(compute_ms, memory_ms),
                       "bound": "compute" if compute_ms >= memory_ms else "memory"})
    weights = int(cost.params * bpe)
    activations = int(cost.peak_activation_bytes * bpe / 4)  # counted in fp32 eager inference
    workspace = (workspace_mb if workspace_mb is not None else default_workspace_mb(device)) * 2**20
    total = weights + activations + workspace
    available = int(device.memory_gb * 1024**3)
    fits = total <= available
    if not fits:
        warnings.append(f"does not fit: needs {total / 1024**3:.2f} GiB (weights {weights / 1024**3:.2f} + activations "
                        f"{activations / 1024**3:.2f} + workspace {workspace / 1024**3:.2f}) but {device.name} has "
                        f"{device.memory_gb:g} GiB")
    elif device.kind == "jetson" and total > available / 2:
        warnings.append(f"uses {100 * total / available:.0f}% of {device.name}'s memory, which the OS and the CPU "
                        "share: expect pressure")
    memory = {"weights_bytes": weights, "activations_bytes": activations, "workspace_bytes": workspace,
              "total_bytes": total, "device_bytes": available, "fraction": total / available, "fits": fits}
    return Estimate(device.name, precision, int(example.shape[0]), sum(l["latency_ms"] for l in layers), layers,
                    memory, warnings)
