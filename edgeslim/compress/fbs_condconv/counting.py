"""MACs of FBS-CondConv models, two ways (specs/seed-raju.md A.6 and E.7).

* ``macs`` (exact): what the ``skip`` inference path really computes for one example: k = ceil(d C)
  output rows from the previous gate's ceil(d C) input channels, the expert combination on those slices
  only, the routing FC and the saliency-predictor FC (both read all C_in pooled inputs, zeros included:
  gathering their weight columns costs more than the few MACs it saves), and the two poolings (l1 mean
  and plain mean over every input channel), each pooled element counted as one accumulate. Layers that are not FBS blocks cost what ``edgeslim.count``
  measures for them (a plain classifier reads all of its inputs). BN, gate and activation are
  elementwise and, as everywhere in edgeslim, not MACs.
* ``macs_thesis``: the thesis's convention, which reproduces Table 3.1 to 0.1 M: fractional d C
  channels, the FBS predictor and all pooling excluded, the classifier reading d C inputs, and the
  expert combination and routing counted only where the gate prunes (d < 1; Table 3.1's d = 1 row is
  the plain baseline).

Which layer feeds which is read from the torch.fx graph: an input is sparse when it comes from a
gated block through channel-preserving operations only (activations, pooling, dropout, flatten). After
a residual addition or a concatenation the input is counted dense, so for such graphs ``macs`` is an
upper bound of what the skip path computes.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...metrics import count
from .convert import ZERO_PRESERVING_ACTIVATIONS
from .layer import FBSCondConv, fbs_layers

__all__ = ["FBSCost", "fbs_cost", "thesis_table_macs"]

_PASS_MODULES = ZERO_PRESERVING_ACTIVATIONS + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                               nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity, nn.Flatten)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.silu, F.relu6, F.hardswish, F.gelu, F.mish, torch.flatten,
                   F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d, F.dropout}
_PASS_METHODS = {"relu", "flatten", "contiguous"}


class _FBSLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, FBSCondConv) or super().is_leaf_module(m, qualname)


def _graph(model: nn.Module) -> fx.Graph | None:
    if isinstance(model, fx.GraphModule):
        return model.graph
    try:
        return _FBSLeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no sparsity information
        warnings.warn(f"cannot trace {type(model).__name__} with torch.fx ({exc}); FBS MACs assume every "
                      "block reads all of its input channels", stacklevel=3)
        return None


def _feeding_block(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The FBS block whose output reaches ``node``'s first input through channel-preserving ops only."""
    arg = node.args[0] if node.args else None
    while isinstance(arg, fx.Node):
        if arg.op == "call_module":
            mod = modules.get(arg.target)
            if isinstance(mod, FBSCondConv):
                return arg.target
            if not isinstance(mod, _PASS_MODULES):
                return None
        elif not ((arg.op == "call_function" and arg.target in _PASS_FUNCTIONS)
                  or (arg.op == "call_method" and arg.target in _PASS_METHODS)):
            return None
        arg = arg.args[0] if arg.args else None
    return None


@dataclass
class FBSCost:
    """Per-example MACs of an FBS-CondConv model; ``layers`` itemises the FBS blocks."""

    macs: int
    macs_thesis: float
    macs_dense_path: int
    params: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    other_macs: int = 0
    other_macs_thesis: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["convention"] = ("macs: exact cost of the skip (gather) inference path per example, ceil(d*C) channels, "
                           "expert combination, routing FC, saliency predictor FC and pooling (1 per pooled element) "
                           "included; macs_thesis: Raju (2022) Table 3.1 convention, fractional d*C, predictor and "
                           "pooling excluded; macs_dense_path: what the batched mask path computes (edgeslim.count)")
        return d


def _layer_cost(name: str, m: FBSCondConv, in_shape, out_shape, feeder: FBSCondConv | None) -> dict[str, Any]:
    c_in, c_out, e = m.in_channels, m.out_channels, m.experts
    kh, kw = m.kernel_size
    in_hw, out_hw = in_shape[2] * in_shape[3], out_shape[2] * out_shape[3]
    n_in = feeder.k if feeder is not None and feeder.gated else c_in
    k = m.k
    exact = {
        "conv": n_in * k * kh * kw * out_hw,
        "combine": e * k * n_in * kh * kw if e > 1 else 0,
        "router": c_in * e if e > 1 else 0,
        "predictor": c_in * c_out if m.gated else 0,
        "pooling": c_in * in_hw * (1 + (e > 1)),
    }
    d_out = m.density if m.gated else 1.0
    d_in = feeder.density if feeder is not None and feeder.gated else 1.0
    prunes = m.gated and m.density < 1
    thesis = (d_in * c_in) * (d_out * c_out) * kh * kw * out_hw
    if e > 1 and prunes:
        thesis += e * kh * kw * (d_in * c_in) * (d_out * c_out) + (d_in * c_in) * e
    return {"name": name, "in_channels": c_in, "out_channels": c_out, "kernel_size": [kh, kw],
            "input_hw": list(in_shape[2:]), "output_hw": list(out_shape[2:]), "experts": e, "density": m.density, "k": k, "active_inputs": n_in,
            "input_density_thesis": d_in, "macs": sum(exact.values()), "macs_breakdown": exact, "macs_thesis": thesis}


@torch.no_grad()
def fbs_cost(model: nn.Module, example_input: torch.Tensor) -> FBSCost:
    """Exact and thesis-convention MACs for one example shaped like ``example_input`` (batch 1 is used)."""
    x = example_input[:1]
    blocks = dict(fbs_layers(model))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no FBS-CondConv blocks; convert it with to_fbs_condconv first")
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: shapes.__setitem__(
        name, (tuple(args[0].shape), tuple(out.shape)))) for name, m in blocks.items()]
    try:
        dense = count(model, x)  # also runs the forward pass that fills ``shapes``
    finally:
        for h in hooks:
            h.remove()
    graph = _graph(model)
    modules = dict(model.named_modules())
    feeders: dict[str, str | None] = {}
    if graph is not None:
        for node in graph.nodes:
            if node.op == "call_module":
                feeders[node.target] = _feeding_block(node, modules)
    layers = []
    for name, m in blocks.items():
        feeder = blocks.get(feeders.get(name) or "")
        layers.append(_layer_cost(name, m, *shapes[name], feeder))
    # Everything outside the blocks (classifier, unconverted convs, functional ops) as edgeslim.count measured it.
    inside = tuple(f"{name}." for name in blocks)
    other = other_thesis = 0
    for layer in dense.layers:
        if layer["name"] in blocks or layer["name"].startswith(inside):
            continue
        other += layer["macs"]
        feeder = blocks.get(feeders.get(layer["name"]) or "")
        d_in = feeder.density if feeder is not None and feeder.gated else 1.0
        other_thesis += layer["macs"] * d_in
    return FBSCost(
        macs=sum(layer["macs"] for layer in layers) + other,
        macs_thesis=sum(layer["macs_thesis"] for layer in layers) + other_thesis,
        macs_dense_path=dense.macs, params=dense.params, layers=layers, other_macs=other,
        other_macs_thesis=other_thesis)


def thesis_table_macs(density: float, experts: int = 4, num_classes: int = 10) -> float:
    """Table 3.1 of the thesis: MACs of FBS-pruned CondConv M-CifarNet at gate density ``density``."""
    from ...models import MCifarNet
    from .convert import to_fbs_condconv

    model = to_fbs_condconv(MCifarNet(num_classes), density=density, experts=experts)
    return fbs_cost(model, torch.zeros(1, 3, 32, 32)).macs_thesis
