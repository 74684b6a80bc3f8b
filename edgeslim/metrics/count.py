"""MACs, FLOPs, parameters and memory of one forward pass, measured on the real computation.

Multiply-accumulates come from torch's own FLOP formulas (``torch.utils.flop_counter``), applied
to every aten operator the model runs, and attributed to the innermost module that ran it.
Convention: ``flops = 2 * macs``; a convolution or matmul counts its multiply-adds, bias additions
are not counted. Every other operator that does arithmetic (BN, activations, additions, pooling,
softmax ...) is *listed* in ``uncounted_ops`` with its call and element counts, never silently
added as zero. Pure data-movement operators (views, reshapes, slicing) cost nothing by nature and
are listed separately as ``free_ops``.

Peak activation memory is measured, not estimated: every tensor an operator creates is tracked
with a weak reference until Python frees it, so the peak is what eager inference really holds at
once (parameters, buffers and the input excluded).
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

__all__ = ["CountResult", "count"]

aten = torch.ops.aten


def _mha_macs(query, _key, _value, embed_dim, num_heads, qkv_weight, *_args, **_kwargs) -> int:
    """MACs of torch's fused inference attention (``nn.MultiheadAttention`` fast path).

    torch has no formula for this fused op; without one a ViT would lose a third of its MACs.
    Counted: the q/k/v projection, Q·Kᵀ, attention·V and the output projection (self-attention).
    """
    batch, tokens, _ = query.shape
    projection = batch * tokens * embed_dim * (qkv_weight.shape[0] + embed_dim)
    attention = 2 * batch * tokens * tokens * embed_dim
    return projection + attention


def _cpu_sdpa_macs(query, key, value, *_args, **_kwargs) -> int:
    """MACs of ``F.scaled_dot_product_attention`` on the CPU (Q·Kᵀ and attention·V), which torch does not count."""
    return sdpa_flop_count(query.shape, key.shape, value.shape) // 2


# operator packet -> MACs formula taking the op's raw arguments (for ops torch does not count)
_EXTRA_MACS = {aten._native_multi_head_attention: _mha_macs}
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_MACS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_macs

# Operators that only move or re-describe data: no arithmetic, reported as free.
_FREE_OPS = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze", "unsqueeze",
    "slice", "select", "alias", "detach", "flatten", "unflatten", "split", "split_with_sizes", "chunk",
    "unbind", "narrow", "as_strided", "contiguous", "clone", "cat", "stack", "constant_pad_nd", "pad",
    "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros",
    "new_empty", "new_ones", "fill", "copy_", "_to_copy", "lift_fresh", "index_select", "gather",
    "index", "roll", "repeat", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "arange",
    "scalar_tensor", "_reshape_alias", "view_as", "expand_as", "dropout", "native_dropout", "zero_",
}


@dataclass
class CountResult:
    """What one forward pass costs. ``macs``/``flops`` cover the ops in ``counted_ops`` only."""

    macs: int
    params: int
    param_bytes: int
    buffer_bytes: int
    peak_activation_bytes: int
    input_shapes: list[list[int]]
    layers: list[dict[str, Any]] = field(default_factory=list)
    counted_ops: dict[str, int] = field(default_factory=dict)  # op -> MACs
    uncounted_ops: list[dict[str, Any]] = field(default_factory=list)
    free_ops: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "buffer_bytes": self.buffer_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "input_shapes": self.input_shapes,
            "convention": "flops = 2 * macs; MACs of convolution, linear/matmul and attention "
            "(torch.utils.flop_counter formulas, bias excluded); ops in uncounted_ops are not included",
            "counted_ops": self.counted_ops,
            "uncounted_ops": self.uncounted_ops,
            "free_ops": self.free_ops,
            "layers": self.layers,
        }


def _op_name(func) -> str:
    return func._overloadpacket.__name__


class _LiveBytes:
    """Tracks bytes of storages created by operators while any tensor still references them."""

    def __init__(self, ignore_ptrs: set[int]):
        self.ignore = ignore_ptrs
        self.refs: dict[int, int] = defaultdict(int)
        self.nbytes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.ignore:
            return
        if self.refs[ptr] == 0:
            self.nbytes[ptr] = storage.nbytes()
            self.live += self.nbytes[ptr]
            self.peak = max(self.peak, self.live)
        self.refs[ptr] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.nbytes.pop(ptr)


class _CountingMode(TorchDispatchMode):
    def __init__(self, stack: list[str], live: _LiveBytes):
        super().__init__()
        self.stack = stack
        self.live = live
        self.macs: dict[str, int] = defaultdict(int)  # module path -> MACs
        self.op_macs: dict[str, int] = defaultdict(int)
        self.uncounted: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # op -> [calls, elements]
        self.free: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        name = _op_name(func)
        counted = packet in flop_registry or packet in _EXTRA_MACS
        if not counted and name not in _FREE_OPS:
            # Composite operators (e.g. CPU attention) may hide matmuls: count their parts instead.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if counted:
            if packet in _EXTRA_MACS:
                macs = _EXTRA_MACS[packet](*args, **kwargs)
            else:
                macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2  # torch's formula
            self.macs[self.stack[-1]] += macs
            self.op_macs[f"aten.{name}"] += macs
        elif name.rstrip("_") in _FREE_OPS or name in _FREE_OPS:
            self.free.add(f"aten.{name}")
        else:
            entry = self.uncounted[f"aten.{name}"]
            entry[0] += 1
            entry[1] += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.live.add(t)
        return out


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def count(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> CountResult:
    """Run one forward pass of ``model`` (in eval mode, without gradients) and count its cost.

    The model is not modified; its train/eval mode is restored afterwards.
    """
    inputs = _as_tuple(example_inputs)
    names = {m: n or "(model)" for n, m in model.named_modules()}
    stack = ["(model)"]
    shapes: dict[str, list[int]] = {}
    in_shapes: dict[str, list[int]] = {}
    calls: dict[str, int] = defaultdict(int)

    def pre(mod, args):
        stack.append(names[mod])
        if args and isinstance(args[0], torch.Tensor):
            in_shapes[names[mod]] = list(args[0].shape)

    def post(mod, _args, out):
        stack.pop()
        calls[names[mod]] += 1
        if isinstance(out, torch.Tensor):
            shapes[names[mod]] = list(out.shape)

    handles = []
    for m in model.modules():
        if m is not model:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    owned |= {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    live = _LiveBytes(owned)
    mode = _CountingMode(stack, live)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), mode:
            out = model(*inputs)
        del out
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    layers = []
    for name, m in model.named_modules():
        name = name or "(model)"
        own_params = sum(p.numel() for p in m.parameters(recurse=False))
        if own_params == 0 and mode.macs.get(name, 0) == 0:
            continue
        layers.append({
            "name": name,
            "type": type(m).__name__,
            "macs": mode.macs.get(name, 0),
            "params": own_params,
            "input_shape": in_shapes.get(name),
            "output_shape": shapes.get(name),
            "calls": calls.get(name, 0),
        })
    params = list(model.parameters())
    return CountResult(
        macs=sum(mode.macs.values()),
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        peak_activation_bytes=live.peak,
        input_shapes=[list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
        layers=layers,
        counted_ops=dict(sorted(mode.op_macs.items())),
        uncounted_ops=[{"op": op, "calls": c, "elements": e} for op, (c, e) in sorted(mode.uncounted.items())],
        free_ops=sorted(mode.free),
    )
