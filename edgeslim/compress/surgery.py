"""Surgery: turn a plan into a physically smaller model, and the masked model that proves it right.

``apply_plan`` copies the model, slices every parameter and buffer the plan names along its
dimension, then lets each touched module's rule update the attributes ``forward()`` relies on
(``out_channels``, ``groups``, ``num_features``, attention heads, padding sizes ...).

``masked_equivalent`` copies the model and zeroes, in every layer that *reads* removed channels,
the weights that read them (e.g. ``conv.weight[:, removed]``). It does not touch producers: a
removed channel's BatchNorm bias would otherwise still leak through. Removed channels are then
computed but never used, every kept channel sees exactly the slim model's inputs, and the two
models agree up to floating-point summation order.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .depth import remove_block
from .plan import PruningPlan
from .rules import module_rule_for

__all__ = ["apply_plan", "masked_equivalent", "equivalence_error"]


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (root.get_submodule(path) if path else root), attr


def _aliases(root: nn.Module) -> dict[str, list[str]]:
    """Every name under which a parameter or buffer is registered (tied weights have several)."""
    by_tensor: dict[int, list[str]] = defaultdict(list)
    for name, t in list(root.named_parameters(remove_duplicate=False)) + list(root.named_buffers(remove_duplicate=False)):
        by_tensor[id(t)].append(name)
    return {n: names for names in by_tensor.values() for n in names}


def _get(root: nn.Module, name: str) -> torch.Tensor:
    module, attr = _owner(root, name)
    t = getattr(module, attr, None)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"the plan names {name!r}, which this model does not have (was the plan made for another model?)")
    return t


def _set(root: nn.Module, names: Sequence[str], value: torch.Tensor) -> None:
    for name in names:
        module, attr = _owner(root, name)
        if attr in module._parameters:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad)
        else:
            module._buffers[attr] = value


def _check(model: nn.Module, plan: PruningPlan) -> None:
    for cut in plan.params:
        t = _get(model, cut["param"])
        if t.dim() <= cut["dim"] or t.shape[cut["dim"]] != cut["size"]:
            raise ValueError(f"plan does not fit this model: {cut['param']} has shape {tuple(t.shape)}, the plan "
                             f"expects size {cut['size']} along dimension {cut['dim']}")


def apply_plan(model: nn.Module, plan: PruningPlan | Mapping[str, Any]) -> nn.Module:
    """A new, physically smaller model (the input model is untouched)."""
    plan = PruningPlan.from_dict(plan)
    _check(model, plan)
    slim = copy.deepcopy(model)
    for path in plan.dropped:  # residual blocks removed whole; their constants live in the state_dict
        remove_block(slim, path)
    aliases = _aliases(slim)
    cuts: dict[str, list[dict]] = defaultdict(list)
    for cut in plan.params:
        cuts[cut["param"]].append(cut)
    touched: dict[str, list[dict]] = defaultdict(list)
    with torch.no_grad():
        for name, dims in cuts.items():
            t = _get(slim, name)
            for cut in dims:
                t = t.index_select(cut["dim"], torch.as_tensor(cut["keep"], dtype=torch.long, device=t.device))
            _set(slim, aliases.get(name, [name]), t.contiguous())
            for alias in aliases.get(name, [name]):
                touched.setdefault(alias.rpartition(".")[0], [])
    for op in plan.ops:
        touched[op["module"]].append(op)
    # children before parents, so that a rule sees its submodules already rewritten
    for path in sorted(touched, key=lambda p: -p.count(".") if p else 1):
        module = slim.get_submodule(path) if path else slim
        rule = module_rule_for(module)
        if rule is None:
            continue
        new = rule.rewrite(module, touched[path])
        if new is not module:
            if not path:
                slim = new
            else:
                parent, _, attr = path.rpartition(".")
                setattr(slim.get_submodule(parent) if parent else slim, attr, new)
    return slim


def masked_equivalent(model: nn.Module, plan: PruningPlan | Mapping[str, Any]) -> nn.Module:
    """The original architecture with every removed channel's reads zeroed in its consumers."""
    plan = PruningPlan.from_dict(plan)
    _check(model, plan)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for cut in plan.params:
            if cut["role"] != "in":
                continue
            t = _get(masked, cut["param"])
            drop = torch.ones(cut["size"], dtype=torch.bool)
            drop[torch.as_tensor(cut["keep"], dtype=torch.long)] = False
            index = [slice(None)] * t.dim()
            index[cut["dim"]] = drop.to(t.device)
            t[tuple(index)] = 0
    return masked


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def equivalence_error(model: nn.Module, slim: nn.Module, plan: PruningPlan | Mapping[str, Any],
                      example_inputs: torch.Tensor | Sequence[torch.Tensor], seed: int = 0) -> float:
    """Largest relative difference between the slim model and the masked model (eval mode) on the
    example inputs and on random inputs of the same shape: ``max |a - b| / max |a|``."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    masked = masked_equivalent(model, plan).eval()
    was = slim.training
    slim.eval()
    gen = torch.Generator().manual_seed(seed)
    trials = [inputs, tuple(torch.randn(t.shape, generator=gen).to(t) if t.is_floating_point() else t
                            for t in inputs)]
    worst = 0.0
    try:
        for x in trials:
            a, b = _flat_outputs(masked(*x)), _flat_outputs(slim(*x))
            if len(a) != len(b) or any(s.shape != t.shape for s, t in zip(a, b)):
                return float("inf")
            for s, t in zip(a, b):
                scale = s.abs().max().item() or 1.0
                worst = max(worst, (s - t).abs().max().item() / scale)
    finally:
        slim.train(was)
    return worst
