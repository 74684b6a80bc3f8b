"""Pruning criteria: (model, channel graph, calibration data) -> one score per channel of every
prunable group; higher means more important (kept first).

Register a new one with ``@register_criterion("name")`` on a :class:`Criterion` subclass; it then
works as ``edgeslim.prune(..., method="name")`` and ``edgeslim prune --method name``.

Data-driven criteria need the activations of a group's channels: :func:`activation_sites` lists
the modules whose output carries them (the producing convolutions / linear layers and their
norms) with the positions of each channel along the output's channel dimension, so a forward
hook on any of them reads channel ``c`` at ``output[:, index[c]]`` (``output[..., index[c]]`` for
a linear layer).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Criterion", "register_criterion", "get_criterion", "CRITERIA", "available_criteria", "activation_sites"]


class Criterion:
    """Base class. ``score`` returns ``{group_id: non-negative scores of shape (group.size,)}`` for
    every prunable group. ``needs_data``: the criterion needs calibration data (a DataLoader)."""

    name = ""
    needs_data = False

    def score(self, model: nn.Module, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError


CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    def deco(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        CRITERIA[name] = cls
        return cls

    return deco


def available_criteria() -> list[str]:
    _load_builtin()
    return sorted(CRITERIA)


def get_criterion(name: str | Criterion) -> Criterion:
    if isinstance(name, Criterion):
        return name
    _load_builtin()
    if name not in CRITERIA:
        raise ValueError(f"unknown pruning method {name!r}; available: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]()


def _load_builtin() -> None:
    from . import magnitude  # noqa: F401  (registers l1, l2, random, bn_scale)
    from . import lda  # noqa: F401  (registers lda)
    from . import mint, snacs  # noqa: F401  (registers mint, snacs)


def activation_sites(model: nn.Module, group) -> list[tuple[str, torch.Tensor]]:
    """``[(module path, index)]``: modules whose output holds the group's channels, in execution order;
    channel ``c`` sits at ``index[c]`` (a row of positions when a channel spans several) of the output's
    channel dimension (dim 1 for convolutions and norms, the last dim for linear layers)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    sites = []
    for s in group.producers:
        module = model.get_submodule(s.module) if s.module else model
        direct = (isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and s.param == "weight" and s.dim == 0
                  and not getattr(module, "transposed", False))
        if direct or (isinstance(module, norms) and s.param == "weight"):
            sites.append((s.module, s.index))
    return sites
