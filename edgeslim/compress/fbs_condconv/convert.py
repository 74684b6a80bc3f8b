"""Turn the conv(-BN)(-activation) chains of a traceable CNN into FBS-CondConv blocks, and back.

``to_fbs_condconv`` traces the model with torch.fx, finds every ``Conv2d`` (groups = 1) together with
the BatchNorm2d that alone consumes it and the zero-preserving activation that alone consumes that,
and replaces the chain by one ``FBSCondConv`` block; everything else in the graph (residual adds,
pooling, classifier) is left as it was. The result is an ``fx.GraphModule``.

``to_static`` is the way back for usage-based slimming: every block becomes a plain
``Conv2d -> BatchNorm2d -> activation`` whose kernel is the data-set-average expert mixture and
whose BN scale carries the average gate, so that the slimming engine can trace and cut it.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layer import FBSCondConv, fbs_layers

__all__ = ["to_fbs_condconv", "to_static", "ZERO_PRESERVING_ACTIVATIONS"]

# Activations with act(0) = 0: only after one of these is a suppressed channel still exactly zero.
ZERO_PRESERVING_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.LeakyReLU,
                               nn.ELU, nn.Tanh, nn.Hardtanh)
_ACTIVATION_FUNCTIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.silu: nn.SiLU, F.relu6: nn.ReLU6,
                         F.hardswish: nn.Hardswish, F.gelu: nn.GELU, F.mish: nn.Mish}


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors for data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                         "FBS-CondConv conversion needs a model without data-dependent Python control flow") from exc


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _batchnorm_after(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    user = _sole_user(node)
    if user is not None and user.op == "call_module" and isinstance(modules[user.target], nn.BatchNorm2d):
        bn = modules[user.target]
        if bn.track_running_stats and user.args[0] is node:
            return user
    return None


def _activation_after(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node | None, nn.Module | None]:
    user = _sole_user(node)
    if user is None or user.args[0] is not node:
        return None, None
    if user.op == "call_module" and isinstance(modules[user.target], ZERO_PRESERVING_ACTIVATIONS):
        return user, copy.deepcopy(modules[user.target])
    if (user.op == "call_function" and user.target in _ACTIVATION_FUNCTIONS and len(user.args) == 1
            and set(user.kwargs) <= {"inplace"}):
        return user, _ACTIVATION_FUNCTIONS[user.target]()
    return None, None


def _unsupported(conv: nn.Conv2d, calls: int) -> str | None:
    if conv.groups != 1:
        return f"grouped/depthwise convolution (groups={conv.groups}) is not converted"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (only zero padding)"
    if calls != 1:
        return f"the module is called {calls} times; a shared conv cannot own one BN and gate"
    return None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


@torch.no_grad()
def _init_block(block: FBSCondConv, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, pretrained: bool,
                expert_noise: float) -> None:
    w, e = conv.weight, block.experts
    if e == 1:
        block.weight[:, :, 0].copy_(w)
    elif pretrained:
        # Router starts at alpha = sigmoid(0) = 1/2 for every expert, experts at 2W/E: the mixture is W.
        # Small noise breaks the symmetry between experts so that they can specialise.
        nn.init.zeros_(block.router.weight)
        nn.init.zeros_(block.router.bias)
        block.weight.copy_(w[:, :, None] * 2 / e + expert_noise * w.std() * torch.randn_like(block.weight))
    else:
        # Independent experts drawn like the conv's own init; with alpha ~ 1/2 the mixture of E experts has
        # the variance of one original kernel.
        block.weight.normal_(0.0, float(w.std()) * 2 / e ** 0.5)
    if block.predictor is not None and pretrained:
        block.predictor.weight.mul_(0.01)  # saliencies start near 1: the converted model starts near the original
    conv_bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn is None:
        block.bias.copy_(conv_bias)
        return
    block.bn.load_state_dict(bn.state_dict())
    block.bn.running_mean.sub_(conv_bias)  # BN(conv + b) == BN'(conv) with the mean shifted by b
    if not bn.affine:
        block.bn.weight.fill_(1.0)
        block.bn.bias.zero_()


def to_fbs_condconv(model: nn.Module, *, density: float | None = 0.5, experts: int = 4,
                    predictor_activation: str = "relu", pretrained: bool = False, exclude: Iterable[str] = (),
                    expert_noise: float = 0.01) -> fx.GraphModule:
    """A new model with every eligible conv(-BN)(-act) chain of ``model`` replaced by an FBS-CondConv block.

    density: gate density d (fraction of output channels kept per example; None = no FBS gate).
    experts: CondConv experts per layer (1 = plain convolution kernels, i.e. FBS alone).
    pretrained: False for training from scratch (independent experts); True to fine-tune a trained model
        (experts start as copies of the trained kernel, so the converted model starts near the original).
    exclude: module paths of convolutions to leave as they are.
    The input model is not modified.
    """
    gm = _trace(copy.deepcopy(model))
    modules = dict(gm.named_modules())
    exclude = set(exclude)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    converted, skipped = [], {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d) or node.target in exclude:
            continue
        conv = modules[node.target]
        reason = _unsupported(conv, calls[node.target])
        if reason:
            skipped[node.target] = reason
            continue
        bn_node = _batchnorm_after(node, modules)
        act_node, act = _activation_after(bn_node or node, modules)
        bn = modules[bn_node.target] if bn_node else None
        block = FBSCondConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, experts=experts, density=density, activation=act,
                            predictor_activation=predictor_activation, norm=bn is not None,
                            **({"bn_eps": bn.eps, "bn_momentum": bn.momentum} if bn is not None else {}))
        block.to(conv.weight.device, conv.weight.dtype).train(conv.training)
        _init_block(block, conv, bn, pretrained, expert_noise)
        _set_submodule(gm, node.target, block)
        last = act_node or bn_node
        if last is not None:
            last.replace_all_uses_with(node)
            for fused in (act_node, bn_node):
                if fused is not None:
                    gm.graph.erase_node(fused)
        converted.append(node.target)
    if not converted:
        raise ValueError(f"no convolution of {type(model).__name__} could be converted to FBS-CondConv"
                         + (f": {skipped}" if skipped else " (it has no nn.Conv2d modules)"))
    if skipped:
        warnings.warn("FBS-CondConv conversion left these convolutions unchanged: "
                      + "; ".join(f"{k}: {v}" for k, v in skipped.items()), stacklevel=2)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


class _StaticBlock(nn.Sequential):
    """conv -> BN -> activation, the static stand-in of an FBS-CondConv block (module names kept short)."""


@torch.no_grad()
def to_static(model: nn.Module, mean_alpha: dict[str, torch.Tensor] | None = None,
              mean_gate: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` whose FBS-CondConv blocks are plain ``Conv2d -> BatchNorm2d -> activation``.

    mean_alpha[name] (E,): expert weights to freeze the mixture with (default: equal weights 1/2, the
        router's value at zero input); the static kernel is sum_e alpha_e W_e.
    mean_gate[name] (C_out,): the per-channel gate to freeze (default: 1 for every channel). Folding
        E[pi_c] into the BN scale and shift keeps channels that are never selected exactly at zero.
    """
    mean_alpha, mean_gate = mean_alpha or {}, mean_gate or {}
    static = copy.deepcopy(model)
    for name, block in fbs_layers(static):
        alpha = mean_alpha.get(name, torch.full((block.experts,), 0.5 if block.experts > 1 else 1.0))
        kernel = torch.einsum("e,oiekl->oikl", alpha.to(block.weight), block.weight)
        conv = nn.Conv2d(block.in_channels, block.out_channels, block.kernel_size, block.stride, block.padding,
                         block.dilation, bias=False).to(block.weight)
        conv.weight.copy_(kernel)
        bn = nn.BatchNorm2d(block.out_channels).to(block.weight)
        if block.bn is not None:
            bn.load_state_dict(block.bn.state_dict())
            bn.eps = block.bn.eps
        else:
            bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps), bn.weight.fill_(1.0)
            bn.bias.copy_(block.bias)
        gate = mean_gate.get(name, torch.ones(block.out_channels)).to(block.weight)
        bn.weight.mul_(gate)
        bn.bias.mul_(gate)
        bn.weight.requires_grad_(True)
        replacement = _StaticBlock(conv, bn, copy.deepcopy(block.activation)).train(block.training)
        _set_submodule(static, name, replacement)
    if isinstance(static, fx.GraphModule):
        static.recompile()
    return static
