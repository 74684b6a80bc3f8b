"""Connection-level masks (the SNACS/MINT thesis mode): ``{param_name: 0/1 tensor}``.

Masks do not change the architecture; they zero individual weights (kernels, connections; see
specs/seed-ganesh.md §0, §5). A checkpoint carries them under the key ``"masks"``, and fine-tuning
must keep every masked weight at exactly zero: ``edgeslim.training.KeepMasks`` re-applies them
after each optimiser step (momentum and weight decay would otherwise move a removed weight).

* ``check_masks``: do the masks fit the model, and how many masked weights are not zero.
* ``apply_masks``: zero the masked weights in place.
* ``masks_after_plan``: the masks of a model cut down to its physically slimmed version.
* ``mask_report``: the thesis's metrics: parameters pruned (%) counting conv and FC layers only,
  FLOPs reduced (%) from the zeroed kernels, and the CSR ``.npz`` memory footprint (MINT §1.7,
  ``csr_npz_bytes``).
"""
from __future__ import annotations

import copy
import io
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["apply_masks", "check_masks", "masks_after_plan", "mask_report", "csr_npz_bytes"]


def _masked_param(params: dict[str, nn.Parameter], name: str, mask: torch.Tensor) -> nn.Parameter:
    """The parameter ``name`` that ``mask`` covers; a ValueError naming the problem when it does not fit."""
    if name not in params:
        raise ValueError(f"mask for {name!r}, but the model has no such parameter "
                         f"(parameters look like {next(iter(params), '?')!r})")
    p = params[name]
    if tuple(mask.shape) != tuple(p.shape):
        raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter has {tuple(p.shape)}")
    return p


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Raise a ValueError naming the first mask that does not fit ``model``; else return the number
    of masked weights that are not exactly zero (0 when the masks hold)."""
    params = dict(model.named_parameters())
    violations = 0
    for name, mask in masks.items():
        p = _masked_param(params, name, mask)
        violations += int(((p.detach() != 0) & (mask.to(p.device) == 0)).sum())
    return violations


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the masked weights of ``model`` in place (mask value 0 = removed connection); returns ``model``."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = _masked_param(params, name, mask)
        p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return model


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


def _weight_layers(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            yield name, m


def csr_npz_bytes(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, dense: bool = False) -> int:
    """Size of the conv/FC weights written as CSR matrices (float32 data, int32 indices) in one ``.npz``.

    ``masks`` zero weights first; ``dense`` stores every entry (the un-pruned model's footprint, even
    if some weights happen to be zero already).
    """
    from scipy import sparse

    arrays = {}
    masks = masks or {}
    for name, m in _weight_layers(model):
        w = m.weight.detach().float().cpu()
        if f"{name}.weight" in masks:
            w = w * torch.as_tensor(masks[f"{name}.weight"]).float()
        w2 = w.reshape(w.shape[0], -1).numpy()
        if dense:
            rows, cols = w2.shape
            data, indices, indptr = w2.ravel(), np.tile(np.arange(cols), rows), np.arange(0, rows * cols + 1, cols)
        else:
            mat = sparse.csr_matrix(w2)
            data, indices, indptr = mat.data, mat.indices, mat.indptr
        arrays[f"{name}.data"] = data.astype(np.float32)
        arrays[f"{name}.indices"] = indices.astype(np.int32)
        arrays[f"{name}.indptr"] = indptr.astype(np.int32)
        if m.bias is not None:
            arrays[f"{name}.bias"] = m.bias.detach().float().cpu().numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getbuffer().nbytes


@torch.no_grad()
def mask_report(model: nn.Module, masks: Mapping[str, torch.Tensor], example: torch.Tensor) -> dict[str, Any]:
    """The thesis's metrics for a masked model.

    ``params_pruned_pct``: zeroed weights / all weights and biases of conv and FC layers (SNACS
    "Pruning (%)", MINT "Parameters Pruned (%)"). ``flops_reduced_pct``: multiply-accumulates of the
    zeroed kernels (per output position) / all conv and FC multiply-accumulates. ``memory_mb``: CSR
    ``.npz`` size of the masked weights (MB = 1e6 bytes), beside ``memory_mb_dense`` (every weight
    stored the same way). Per layer too.
    """
    check_masks(model, masks)
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(_weight_layers(model))
    def record(name):
        def hook(mod, args, output):
            shapes.setdefault(name, tuple(output.shape))  # returns None: the output is left alone
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total_params = pruned_params = total_macs = pruned_macs = 0
    layers = []
    for name, m in modules.items():
        if name not in shapes:
            continue  # never called
        n_w = m.weight.numel()
        n_b = m.bias.numel() if m.bias is not None else 0
        out_shape = shapes[name]
        # output positions per sample: H x W for a convolution, the token count for a linear layer
        positions = int(np.prod(out_shape[2:])) if not isinstance(m, nn.Linear) else int(np.prod(out_shape[1:-1]))
        per_weight_macs = positions  # every weight is used once per output position
        mask = masks.get(f"{name}.weight")
        zeroed = int((torch.as_tensor(mask) == 0).sum()) if mask is not None else 0
        total_params += n_w + n_b
        pruned_params += zeroed
        total_macs += n_w * per_weight_macs
        pruned_macs += zeroed * per_weight_macs
        layers.append({"name": name, "weights": n_w, "pruned": zeroed, "pruned_pct": 100.0 * zeroed / n_w})
    return {
        "params_pruned_pct": 100.0 * pruned_params / max(1, total_params),
        "flops_reduced_pct": 100.0 * pruned_macs / max(1, total_macs),
        "params_total": total_params, "params_pruned": pruned_params,
        "macs_total": total_macs, "macs_pruned": pruned_macs,
        "memory_mb": csr_npz_bytes(model, masks) / 1e6, "memory_mb_dense": csr_npz_bytes(model, dense=True) / 1e6,
        "layers": layers,
    }
