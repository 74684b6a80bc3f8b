"""The channel graph: which channels of a model must be removed together, and where they live.

A *channel group* is a set of channels that one decision keeps or removes: the output filters of a
convolution together with the BatchNorm entries that follow it, the input columns of every layer
that reads them, and every channel coupled to them by a residual addition, an SE multiplication,
a concatenation, a split, a shuffle ... Channel ``c`` of a group lives at position ``index[c]``
(or at the positions of row ``index[c]``) along dimension ``dim`` of each parameter it touches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ParamSlice", "ChannelGroup", "ChannelGraph", "UnsupportedOpError"]

# Roles of a parameter slice:
#   "out"   - the slice computes the channels (conv / linear output filters, attention head projections)
#   "inout" - computes the channels from the same channels (depthwise / grouped conv filters)
#   "param" - a per-channel parameter or buffer (bias, BatchNorm, layer scale, positional embedding)
#   "in"    - the slice reads the channels (conv / linear input columns); zeroed by masked_equivalent
PRODUCING = ("out", "inout", "param")
COMPUTING = ("out", "inout")


class UnsupportedOpError(RuntimeError):
    """The tracer met an operator that may move or mix channels and has no rule for it."""

    def __init__(self, message: str, unsupported: list[dict[str, Any]] | None = None, coverage: Any = None):
        super().__init__(message)
        self.unsupported = unsupported or []
        self.coverage = coverage


@dataclass
class ParamSlice:
    """Channel ``c`` of the group lives at ``index[c]`` (1-D) or at the positions ``index[c, :]`` (2-D,
    e.g. the spatial block of a channel after ``flatten``) along ``dim`` of ``module.param``."""

    module: str
    param: str
    dim: int
    index: torch.Tensor | None
    role: str = "out"

    @property
    def name(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param

    def positions(self) -> torch.Tensor:
        return self.index.reshape(self.index.shape[0], -1)

    def __repr__(self) -> str:
        k = 1 if self.index is None or self.index.dim() == 1 else self.index.shape[1]
        return f"ParamSlice({self.name}, dim={self.dim}, role={self.role}" + (f", x{k})" if k > 1 else ")")


@dataclass
class ChannelGroup:
    id: str
    size: int
    prunable: bool
    reason: str | None
    producers: list[ParamSlice] = field(default_factory=list)
    consumers: list[ParamSlice] = field(default_factory=list)
    classes: np.ndarray | None = field(default=None, repr=False)  # internal: class id of each channel

    def producer_modules(self) -> list[str]:
        """Modules (conv, linear, attention) whose output carries these channels."""
        return list(dict.fromkeys(s.module for s in self.producers if s.role in COMPUTING))

    def consumer_modules(self) -> list[str]:
        """Modules (conv, linear, attention) whose input reads these channels."""
        return list(dict.fromkeys(s.module for s in self.consumers))

    def slices(self) -> list[ParamSlice]:
        return self.producers + self.consumers

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "size": self.size, "prunable": self.prunable, "reason": self.reason,
            "producers": [s.name for s in self.producers if s.role in COMPUTING],
            "params": [s.name for s in self.producers if s.role == "param"],
            "consumers": [s.name for s in self.consumers],
        }


@dataclass
class ParamDim:
    """Internal: the class (channel identity) of every position along one dimension of a parameter."""

    name: str          # fully qualified parameter / buffer name
    dim: int
    role: str
    classes: np.ndarray  # class id per position
    is_buffer: bool


@dataclass
class OpRecord:
    """Internal: an operator whose constants a module surgeon rewrites (e.g. the padding of PadShortcut)."""

    module: str
    op: str
    dim: int
    classes: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MacTerm:
    """Internal: MACs of one operator = ``macs`` x the kept fraction of every factor (class id arrays)."""

    op: str
    module: str
    macs: int
    factors: list[np.ndarray]


class ChannelGraph:
    """Result of :func:`edgeslim.trace`: channel groups plus what surgery, costs and reports need."""

    def __init__(self, groups: list[ChannelGroup], param_dims: list[ParamDim], op_records: list[OpRecord],
                 mac_terms: list[MacTerm], param_shapes: dict[str, tuple[int, ...]], buffers: set[str],
                 coverage: list[dict[str, Any]], input_shapes: list[list[int]], trace_s: float,
                 num_classes: int, model_type: str):
        self.groups = groups
        self.param_dims = param_dims
        self.op_records = op_records
        self.mac_terms = mac_terms
        self.param_shapes = param_shapes
        self.buffers = buffers
        self.coverage = coverage
        self.input_shapes = input_shapes
        self.trace_s = trace_s
        self.num_classes = num_classes  # number of channel identities (union-find classes)
        self.model_type = model_type
        self._by_id = {g.id: g for g in groups}

    def group(self, group_id: str) -> ChannelGroup:
        try:
            return self._by_id[group_id]
        except KeyError:
            raise KeyError(f"no channel group {group_id!r}; groups: {', '.join(list(self._by_id)[:20])} ...") from None

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def unsupported_ops(self) -> list[dict[str, Any]]:
        return [c for c in self.coverage if c["category"] == "unsupported"]

    def coverage_summary(self) -> dict[str, dict[str, Any]]:
        """Per operator: its category and how often it occurs."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.coverage:
            entry = out.setdefault(c["op"], {"category": c["category"], "count": 0})
            entry["count"] += 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        prunable = self.prunable_groups
        return {
            "groups": len(self.groups),
            "prunable_groups": len(prunable),
            "prunable_channels": int(sum(g.size for g in prunable)),
            "trace_s": round(self.trace_s, 3),
            "coverage": self.coverage_summary(),
            "unsupported_ops": self.unsupported_ops,
        }

    def __repr__(self) -> str:
        p = self.prunable_groups
        return (f"ChannelGraph({self.model_type}: {len(self.groups)} groups, {len(p)} prunable with "
                f"{sum(g.size for g in p)} channels)")
