"""Connection-level masks (the SNACS/MINT thesis mode): ``{param_name: 0/1 tensor}``.

Masks do not change the architecture; they zero individual weights (kernels, connections). A
checkpoint carries them under the key ``"masks"``, and fine-tuning must keep every masked weight
at exactly zero (``edgeslim.training.KeepMasks`` re-applies them after each optimiser step).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["apply_masks", "check_masks", "masks_after_plan"]


def check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Raise a ValueError naming the first mask that does not fit ``model``."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"mask for {name!r}, but the model has no such parameter "
                             f"(parameters look like {next(iter(params), '?')!r})")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter has "
                             f"{tuple(params[name].shape)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` in place (mask value 0 = removed connection)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def masks_after_plan(model: nn.Module, plan: Any, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks of ``model`` cut down to the slim model ``apply_plan(model, plan)``.

    The masks ride through the very surgery that slims the weights: they are written into a copy
    of the model in place of its weights, the plan is applied, and what is left of them is read back.
    """
    from .surgery import apply_plan

    check_masks(model, masks)
    carrier = copy.deepcopy(model)
    params = dict(carrier.named_parameters())
    for name, mask in masks.items():
        params[name].copy_(mask)
    slim = dict(apply_plan(carrier, plan).named_parameters())
    return {name: slim[name].detach().clone() for name in masks}
