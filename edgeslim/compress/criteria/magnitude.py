"""Data-free baselines: filter magnitude (L1, L2), BatchNorm scale and random scores."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..graph import COMPUTING, ChannelGroup, ParamSlice
from . import Criterion, register_criterion

__all__ = ["L1", "L2", "RandomScores", "BNScale", "slice_norm"]


def _tensor(model: nn.Module, s: ParamSlice) -> torch.Tensor:
    module = model.get_submodule(s.module) if s.module else model
    return getattr(module, s.param).detach()


def slice_norm(model: nn.Module, s: ParamSlice, p: int) -> torch.Tensor:
    """Sum over each channel's positions of ``sum |w|^p`` taken over all other dimensions."""
    t = _tensor(model, s).float()
    per_position = t.movedim(s.dim, 0).reshape(t.shape[s.dim], -1).abs().pow(p).sum(1)
    return per_position[s.positions()].sum(1)


def _magnitude(model: nn.Module, group: ChannelGroup, p: int) -> torch.Tensor:
    total = torch.zeros(group.size)
    for s in group.producers:
        if s.role in COMPUTING:
            total += slice_norm(model, s, p)
    return total


@register_criterion("l1")
class L1(Criterion):
    """L1 norm of the filters that compute each channel (Li et al., 2017), summed over coupled producers."""

    def score(self, model, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        return {g.id: _magnitude(model, g, 1) for g in graph.prunable_groups}


@register_criterion("l2")
class L2(Criterion):
    """L2 norm of the filters that compute each channel, summed over coupled producers."""

    def score(self, model, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        return {g.id: _magnitude(model, g, 2).sqrt() for g in graph.prunable_groups}


@register_criterion("random")
class RandomScores(Criterion):
    """Uniform random scores (a sanity baseline); ``seed`` option (default 0)."""

    def score(self, model, graph, data=None, seed: int = 0, **options: Any) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {g.id: torch.rand(g.size, generator=gen) for g in graph.prunable_groups}


@register_criterion("bn_scale")
class BNScale(Criterion):
    """|gamma| of the BatchNorm/GroupNorm/InstanceNorm entries of each channel (network slimming,
    Liu et al., 2017), summed over coupled norms; groups without such a norm (e.g. attention heads)
    fall back to the L1 filter norm."""

    NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)

    def score(self, model, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        scores = {}
        for g in graph.prunable_groups:
            total, found = torch.zeros(g.size), False
            for s in g.producers:
                module = model.get_submodule(s.module) if s.module else model
                if s.role == "param" and s.param == "weight" and isinstance(module, self.NORMS):
                    total += slice_norm(model, s, 1)
                    found = True
            scores[g.id] = total if found else _magnitude(model, g, 1)
        return scores
