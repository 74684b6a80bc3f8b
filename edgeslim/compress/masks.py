"""Connection-level masks (the SNACS/MINT thesis mode): ``{param_name: 0/1 tensor}``.

Masks do not change the architecture; they zero individual weights (kernels, connections). A
checkpoint carries them under the key ``"masks"``, and fine-tuning must keep every masked weight
at exactly zero (``edgeslim.training.KeepMasks`` re-applies them after each optimiser step).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["apply_masks", "check_masks"]


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
