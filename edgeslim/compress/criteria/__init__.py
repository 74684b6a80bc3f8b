"""Pruning criteria: (model, channel graph, calibration data) -> one score per channel of every
prunable group; higher means more important (kept first).

Register a new one with ``@register_criterion("name")`` on a :class:`Criterion` subclass; it then
works as ``edgeslim.prune(..., method="name")`` and ``edgeslim prune --method name``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Criterion", "register_criterion", "get_criterion", "CRITERIA", "available_criteria"]


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
    from . import mint, snacs  # noqa: F401  (registers mint, snacs)
