"""Connection (kernel) masks: apply them, keep them fixed while fine-tuning, and measure them.

The MINT/SNACS thesis mode zeroes kernels instead of removing channels (specs/seed-ganesh.md §0, §5).
Masks are ``{parameter name: 0/1 tensor of the parameter's shape}``, stored in a checkpoint under
``"masks"``.

* ``apply_masks`` multiplies the weights in place and (optionally) registers gradient hooks that
  zero the gradients of masked weights. With zero weights and zero gradients every optimiser in
  ``edgeslim.training`` (SGD with momentum and weight decay, AdamW, RMSprop) leaves the weights at
  exactly zero: momentum and moment buffers of those entries stay zero and decay of 0 is 0.
* ``MaskCallback`` does that for ``edgeslim.training.fit`` and re-checks the masks after every epoch.
* ``mask_report`` gives the thesis's metrics: parameters pruned (%) counting conv and FC layers only,
  FLOPs reduced (%) from the zeroed kernels, and the CSR ``.npz`` memory footprint (MINT §1.7).
"""
from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..training.loop import Callback, TrainState

__all__ = ["apply_masks", "remove_mask_hooks", "MaskCallback", "check_masks", "mask_report", "csr_npz_bytes"]

_HOOKS_ATTR = "_edgeslim_mask_hooks"


def _validated(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"mask for {name!r} but the model has no such parameter")
        p = params[name]
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(p.shape)}")
        out[name] = (p, mask.to(device=p.device, dtype=p.dtype))
    return out


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], freeze: bool = True) -> nn.Module:
    """Zero the masked weights of ``model`` in place; with ``freeze`` also zero their gradients from now on.

    Calling it again replaces earlier gradient hooks. Returns ``model``.
    """
    remove_mask_hooks(model)
    hooks = []
    with torch.no_grad():
        for name, (param, mask) in _validated(model, masks).items():
            param.mul_(mask)
            if freeze:
                hooks.append(param.register_hook(lambda grad, m=mask: grad * m))
    setattr(model, _HOOKS_ATTR, hooks)
    return model


def remove_mask_hooks(model: nn.Module) -> None:
    for h in getattr(model, _HOOKS_ATTR, []):
        h.remove()
    if hasattr(model, _HOOKS_ATTR):
        delattr(model, _HOOKS_ATTR)


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Number of masked weights that are not exactly zero (0 when the masks hold)."""
    bad = 0
    for _, (param, mask) in _validated(model, masks).items():
        bad += int(((param.detach() != 0) & (mask == 0)).sum())
    return bad


class MaskCallback(Callback):
    """Keeps connection masks fixed during ``fit``: masked weights start and stay exactly zero."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self.masks = dict(masks)
        self.violations = 0

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == 0 or not getattr(state.model, _HOOKS_ATTR, None):
            apply_masks(state.model, self.masks, freeze=True)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        bad = check_masks(state.model, self.masks)
        self.violations += bad
        if bad:  # should not happen; re-impose rather than train on with a broken mask
            apply_masks(state.model, self.masks, freeze=True)
        record["masked_nonzero"] = bad
        if state.epoch + 1 == state.config.epochs:
            remove_mask_hooks(state.model)


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
    _validated(model, masks)
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
