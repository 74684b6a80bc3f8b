"""Operator rules: how each ATen operator maps and couples channels.

Every operator in a traced graph is classified. An operator with a rule maps its inputs' channel
maps to its output's; an operator without one that touches prunable channels makes ``trace``
raise :class:`UnsupportedOpError` (coverage, not silence). Rules are conservative: when an
operator would need channel counts that only Python knows (constant slice bounds, a reduction or
normalisation over channels, a contraction between two activations), the channels involved are
*fixed* (kept as they are), with the reason recorded in the channel group.

Extend with :func:`register_op_rule` (an operator) or :func:`register_module_rule` (a module type,
traced as a whole and/or rewritten after surgery).
"""
from __future__ import annotations

import math
import string
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .trace import Builder, CMap, ParamRef, op_name, shape_of

__all__ = ["register_op_rule", "register_module_rule", "ModuleRule", "OP_RULES", "module_rule_for"]

Rule = Callable[[Builder, torch.fx.Node], Any]
OP_RULES: dict[str, tuple[str, Rule]] = {}


def register_op_rule(op: str, rule: str | Rule, category: str | None = None) -> None:
    """Teach the tracer an operator, e.g. ``register_op_rule("aten.my_act", "elementwise")``.

    ``rule``: ``"elementwise"`` (acts on every element, broadcasting like ``add``; channels kept and
    coupled), ``"no_channels"`` (its output carries no prunable channels and it reads none), or a
    function ``rule(builder, node) -> output channel map`` (see ``edgeslim.compress.rules`` for
    examples). ``op`` is spelled like ``aten.conv2d`` (the operator's overload packet).
    """
    if isinstance(rule, str):
        if rule not in _NAMED_RULES:
            raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(_NAMED_RULES)} or a function")
        category, rule = category or rule, _NAMED_RULES[rule]
    OP_RULES[op] = (category or "custom", rule)


def _rule(category: str, *ops: str):
    def deco(fn: Rule) -> Rule:
        for op in ops:
            OP_RULES[f"aten.{op}" if "." not in op else op] = (category, fn)
        return fn

    return deco


# helpers ------------------------------------------------------------------------------------------

def arg(node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def tensor_nodes(node) -> list[torch.fx.Node]:
    return [a for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)]


def mapped(b: Builder, a: Any) -> CMap | None:
    return b.as_map(b.val(a)) if isinstance(a, torch.fx.Node) else None


def norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


def merge_maps(b: Builder, operands: list[tuple[CMap | None, tuple[int, ...]]], out_shape: tuple[int, ...],
               skip_dim: int | None = None, what: str = "combined elementwise") -> CMap | None:
    """Align operands (right-aligned broadcasting) and couple their channels position by position.

    An operand broadcast along its channel dimension has that channel fixed; an operand without
    channel information but with the full size along the channel dimension fixes the channels.
    """
    nd = len(out_shape)
    found: list[tuple[int, np.ndarray]] = []
    plain: list[tuple[int, ...]] = []
    for m, shape in operands:
        if shape is None:
            continue
        offset = nd - len(shape)
        if m is None:
            plain.append(shape)
            continue
        od = m.dim + offset
        if od != skip_dim and shape[m.dim] == 1 and out_shape[od] > 1:
            b.fix(m.atoms, f"broadcast across {out_shape[od]} channels")
            continue
        found.append((od, m.atoms))
    if not found:
        return None
    dims = {od for od, _ in found}
    if len(dims) > 1:
        for _, atoms in found:
            b.fix(atoms, f"{what} with channels on different dimensions")
        return None
    od = dims.pop()
    atoms = found[0][1]
    for _, other in found[1:]:
        if len(other) == len(atoms):
            b.unify(atoms, other)
        else:
            b.fix(atoms, f"{what} with a different channel count")
            b.fix(other, f"{what} with a different channel count")
    for shape in plain:
        offset = nd - len(shape)
        if od - offset >= 0 and od != skip_dim and shape[od - offset] == out_shape[od] and out_shape[od] > 1:
            b.fix(atoms, f"{what} with a tensor that has no prunable channels")
    return CMap(od, atoms)


# elementwise ----------------------------------------------------------------------------------------

def elementwise(b: Builder, node) -> Any:
    out_shape = shape_of(node)
    if out_shape is None:
        return None
    operands = [(mapped(b, a), shape_of(a)) for a in tensor_nodes(node)]
    return merge_maps(b, operands, out_shape)


def no_channels(b: Builder, node) -> Any:
    return None


def same_as_input(b: Builder, node) -> Any:
    """Ops whose output has the input's layout (``zeros_like``, ``fill_``, dropout in eval mode)."""
    m = mapped(b, node.args[0])
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [m] + [None] * (len(val) - 1)
    return m


_NAMED_RULES = {"elementwise": elementwise, "no_channels": no_channels, "same_as_input": same_as_input}

OP_RULES.update({f"aten.{op}": ("elementwise", same_as_input) for op in (
    "dropout", "dropout_", "native_dropout", "feature_dropout", "feature_dropout_", "alpha_dropout",
    "alpha_dropout_", "feature_alpha_dropout", "contiguous", "alias", "detach", "detach_", "_to_copy", "to",
    "type_as", "clone", "lift_fresh", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "fill_", "zero_", "hardswish", "hardswish_", "_assert_tensor_metadata", "clamp_",
    "bernoulli", "bernoulli_", "requires_grad_", "resolve_conj", "resolve_neg", "positive", "view_as_real",
)})
OP_RULES.update({f"aten.{op}": ("no channels", no_channels) for op in (
    "arange", "zeros", "ones", "full", "empty", "empty_strided", "new_zeros", "new_ones", "new_full", "new_empty",
    "scalar_tensor", "lift_fresh_copy", "sym_size", "sym_numel", "sym_stride", "_assert_async",
    "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size", "rand", "randn", "randint",
    "linspace", "eye", "tensor", "_local_scalar_dense", "item", "size", "stride", "numel", "dim",
    "_functional_assert_async", "_print",
)})


@_rule("elementwise", "copy_", "copy")
def _copy_(b: Builder, node) -> Any:
    dst, src = mapped(b, node.args[0]), mapped(b, node.args[1])
    return merge_maps(b, [(dst, shape_of(node.args[0])), (src, shape_of(node.args[1]))], shape_of(node))


# convolution and linear ---------------------------------------------------------------------------------

def _computed_weight(b: Builder, m: CMap | None, out_channels: int, dim: int, what: str) -> CMap:
    b.fix(m.atoms if m else None, f"{what} with a weight computed in forward()")
    return CMap(dim, b.new_fixed(out_channels, f"{what} with a weight computed in forward()"))


@_rule("conv", "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
       "conv_transpose3d", "_convolution")
def conv(b: Builder, node) -> Any:
    name = op_name(node.target)
    x, w, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    if name in ("aten.convolution", "aten._convolution"):
        transposed, groups = bool(arg(node, 6, "transposed")), int(arg(node, 8, "groups", 1))
    elif name.startswith("aten.conv_transpose"):
        transposed, groups = True, int(arg(node, 6, "groups", 1))
    else:
        transposed, groups = False, int(arg(node, 6, "groups", 1))
    in_shape, out_shape = shape_of(x), shape_of(node)
    w_shape = shape_of(w)
    c_out = out_shape[1]
    spatial = math.prod(in_shape[2:] if transposed else out_shape[2:])
    macs = in_shape[0] * math.prod(w_shape) * spatial
    m = mapped(b, x)
    if m is not None and m.dim != 1:
        b.fix(m.atoms, "channels in a spatial position of a convolution")
        m = None
    wref = b.val(w)
    if not isinstance(wref, ParamRef):
        b.mac(macs)
        return _computed_weight(b, m, c_out, 1, "convolution")
    if groups == 1:
        out_atoms = b.param_atoms(wref, 1 if transposed else 0, "out")
        in_atoms = b.param_atoms(wref, 0 if transposed else 1, "in")
        if m is not None:
            b.unify(m.atoms, in_atoms)
        b.mac(macs, in_atoms, out_atoms)
    else:
        # A grouped (or depthwise) convolution is pruned by whole groups: group k's input channels and
        # output channels go together, so every group keeps its width and `groups` shrinks.
        if transposed:
            rows = b.param_atoms(wref, 0, "inout")       # the weight's rows are the input channels
            if m is not None:
                b.unify(m.atoms, rows)
            out_atoms = b.new(c_out)
            block_in, block_out = rows.reshape(groups, -1), out_atoms.reshape(groups, -1)
        else:
            rows = out_atoms = b.param_atoms(wref, 0, "inout")
            block_out = rows.reshape(groups, -1)
            block_in = m.atoms.reshape(groups, -1) if m is not None else None
        anchor = block_out[:, :1]
        b.unify(block_out, anchor)
        if block_in is not None:
            b.unify(block_in, anchor)
        b.mac(macs, out_atoms)
    bref = b.val(bias) if bias is not None else None
    if isinstance(bref, ParamRef):
        b.unify(b.param_atoms(bref, 0, "param"), out_atoms)
    return CMap(1, out_atoms)


@_rule("linear", "linear")
def linear(b: Builder, node) -> Any:
    x, w, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    in_shape, out_shape = shape_of(x), shape_of(node)
    wref = b.val(w)
    m = mapped(b, x)
    macs = math.prod(out_shape) * in_shape[-1]
    last = len(in_shape) - 1
    if not isinstance(wref, ParamRef):
        b.mac(macs)
        return _computed_weight(b, m, out_shape[-1], len(out_shape) - 1, "linear layer")
    if m is not None and m.dim != last:
        # the linear layer mixes a non-channel dimension (e.g. tokens); channels pass through
        b.mac(macs, m.atoms)
        return CMap(m.dim, m.atoms)
    in_atoms = b.param_atoms(wref, 1, "in")
    out_atoms = b.param_atoms(wref, 0, "out")
    if m is not None:
        b.unify(m.atoms, in_atoms)
    bref = b.val(bias) if bias is not None else None
    if isinstance(bref, ParamRef):
        b.unify(b.param_atoms(bref, 0, "param"), out_atoms)
    b.mac(macs, in_atoms, out_atoms)
    return CMap(len(out_shape) - 1, out_atoms)


def contract(b: Builder, node, specs: list[str], out_spec: str, operands: list, out_shape: tuple[int, ...]) -> Any:
    """Channel rule of an einsum-like product. ``operands``: fx nodes, in the order of ``specs``.

    A channel dimension that survives into the output keeps its channels (coupled across operands
    sharing it, e.g. attention heads); one that is summed over between two activations is fixed,
    because the removed channels' products would still be in the masked model's sum. A parameter
    operand acts like a linear layer's weight.
    """
    sizes: dict[str, int] = {}
    for spec, a in zip(specs, operands):
        for letter, s in zip(spec, shape_of(a)):
            sizes[letter] = max(sizes.get(letter, 1), s)
    macs = math.prod(sizes.values())
    params = [(spec, b.val(a)) for spec, a in zip(specs, operands) if isinstance(b.val(a), ParamRef)]
    acts = [(spec, mapped(b, a), shape_of(a)) for spec, a in zip(specs, operands) if not isinstance(b.val(a), ParamRef)]
    factors = []
    absorbed: set[str] = set()
    out_letter, out_atoms = None, None
    for spec, ref in params:
        for d, letter in enumerate(spec):
            if ref.shape[d] <= 1:
                continue
            if letter not in out_spec:
                readers = [m for s, m, _ in acts if m is not None and s[m.dim] == letter]
                if readers:
                    p = b.param_atoms(ref, d, "in")
                    for m in readers:
                        b.unify(m.atoms, p)
                    absorbed.add(letter)
                    factors.append(p)
    for spec, m, shape in acts:
        if m is None:
            continue
        letter = spec[m.dim]
        if shape[m.dim] == 1 and sizes[letter] > 1:
            b.fix(m.atoms, "broadcast in a matrix product")
        elif letter not in out_spec:
            if letter not in absorbed:
                b.fix(m.atoms, "summed over in a product of two activations (e.g. attention scores)")
        elif out_letter is None:
            out_letter, out_atoms = letter, m.atoms
        elif letter == out_letter and len(m.atoms) == len(out_atoms):
            b.unify(out_atoms, m.atoms)
        else:
            b.fix(m.atoms, "a matrix product with channels on two output dimensions")
    if out_letter is None:
        for spec, ref in params:
            for d, letter in enumerate(spec):
                if letter in out_spec and ref.shape[d] > 1 and letter not in (s for sp, _, _ in acts for s in sp):
                    out_letter, out_atoms = letter, b.param_atoms(ref, d, "out")
                    break
            if out_letter:
                break
    if out_atoms is not None:
        factors.append(out_atoms)
    b.mac(macs, *factors)
    return CMap(out_spec.index(out_letter), out_atoms) if out_letter is not None else None


def _matmul_specs(a_shape, b_shape) -> tuple[str, str, str] | None:
    if len(a_shape) < 2 or len(b_shape) < 2:
        return None
    letters = iter(string.ascii_letters)
    batch_n = max(len(a_shape), len(b_shape)) - 2
    batch = "".join(next(letters) for _ in range(batch_n))
    n, k, m = next(letters), next(letters), next(letters)
    a_spec = batch[batch_n - (len(a_shape) - 2):] + n + k
    b_spec = batch[batch_n - (len(b_shape) - 2):] + k + m
    return a_spec, b_spec, batch + n + m


@_rule("matmul", "matmul", "mm", "bmm")
def matmul(b: Builder, node) -> Any:
    a, c = node.args[0], node.args[1]
    specs = _matmul_specs(shape_of(a), shape_of(c))
    if specs is None:
        for x in (a, c):
            m = mapped(b, x)
            b.fix(m.atoms if m else None, "a vector product")
        return None
    return contract(b, node, [specs[0], specs[1]], specs[2], [a, c], shape_of(node))


@_rule("matmul", "addmm", "baddbmm")
def addmm(b: Builder, node) -> Any:
    bias, a, c = node.args[0], node.args[1], node.args[2]
    specs = _matmul_specs(shape_of(a), shape_of(c))
    out = contract(b, node, [specs[0], specs[1]], specs[2], [a, c], shape_of(node))
    return merge_maps(b, [(out, shape_of(node)), (mapped(b, bias), shape_of(bias))], shape_of(node))


@_rule("matmul", "einsum")
def einsum(b: Builder, node) -> Any:
    equation, operands = node.args[0], list(node.args[1])
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    specs = lhs.split(",")
    if "." in equation or not rhs or any(len(s) != len(shape_of(o)) for s, o in zip(specs, operands)):
        for o in operands:
            m = mapped(b, o)
            b.fix(m.atoms if m else None, f"einsum {equation!r} (ellipsis or implicit output)")
        return None
    return contract(b, node, specs, rhs, operands, shape_of(node))


@_rule("attention", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention")
def attention(b: Builder, node) -> Any:
    """softmax(q k^T * scale + mask) v over (..., L, E) queries, (..., S, E) keys, (..., S, Ev) values.

    Channels survive on the batch dimensions (attention heads, coupled across q, k and v) and on the
    values' last dimension; q/k's E is summed over (and sets the scale) and S is softmaxed: fixed.
    """
    q, k, v = node.args[:3]
    shapes = [shape_of(t) for t in (q, k, v)]
    qs, ks, vs = shapes
    nb = len(qs) - 2
    out_dim, out_atoms = None, None

    def offer(dim: int, atoms: np.ndarray) -> None:
        nonlocal out_dim, out_atoms
        if out_dim is None:
            out_dim, out_atoms = dim, atoms
        elif dim == out_dim and len(atoms) == len(out_atoms):
            b.unify(out_atoms, atoms)
        else:
            b.fix(atoms, "attention with channels on two dimensions")

    for role, x, shape in zip("qkv", (q, k, v), shapes):
        m = mapped(b, x)
        if m is None:
            continue
        if m.dim < nb and shape[m.dim] == qs[m.dim]:
            offer(m.dim, m.atoms)                        # heads (or another batch dimension)
        elif role == "v" and m.dim == nb + 1:
            offer(nb + 1, m.atoms)                       # value channels pass through
        elif role == "q" and m.dim == nb:
            offer(nb, m.atoms)                           # query positions pass through
        else:
            b.fix(m.atoms, "summed over in attention (query-key product or softmax)")
    mask = arg(node, 3, "attn_mask")
    if isinstance(mask, torch.fx.Node):
        mm = mapped(b, mask)
        b.fix(mm.atoms if mm else None, "used as an attention mask")
    macs = math.prod(qs[:-2]) * qs[-2] * ks[-2] * (qs[-1] + vs[-1])
    b.mac(macs, out_atoms if out_dim is not None and out_dim < nb else None)
    result = CMap(out_dim, out_atoms) if out_dim is not None else None
    val = node.meta.get("val")
    return [result] + [None] * (len(val) - 1) if isinstance(val, (list, tuple)) else result


# normalisation ----------------------------------------------------------------------------------------

def _per_channel_params(b: Builder, node, indices: list[int], atoms: np.ndarray | None) -> None:
    for i in indices:
        p = node.args[i] if len(node.args) > i else None
        ref = b.val(p) if isinstance(p, torch.fx.Node) else None
        if isinstance(ref, ParamRef) and atoms is not None and ref.shape and ref.shape[0] == len(atoms):
            b.unify(b.param_atoms(ref, 0, "param"), atoms)


@_rule("norm", "batch_norm", "instance_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
       "native_batch_norm", "_batch_norm_with_update", "_batch_norm_no_update")
def batch_norm(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is not None and m.dim != 1:
        b.fix(m.atoms, "channels in a spatial position of a batch norm")
        m = None
    atoms = m.atoms if m is not None else None
    _per_channel_params(b, node, [1, 2, 3, 4], atoms)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [m] + [None] * (len(val) - 1)
    return m


@_rule("norm", "layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm")
def layer_norm(b: Builder, node) -> Any:
    x, normalized_shape = node.args[0], node.args[1]
    shape = shape_of(x)
    m = mapped(b, x)
    first = len(shape) - len(normalized_shape)
    if m is not None and m.dim >= first:
        b.fix(m.atoms, "normalised together by a LayerNorm (removing a channel changes the others' statistics)")
        for i in (2, 3):
            p = node.args[i] if len(node.args) > i else None
            ref = b.val(p) if isinstance(p, torch.fx.Node) else None
            if isinstance(ref, ParamRef):
                b.unify(b.param_atoms(ref, m.dim - first, "param"), m.atoms)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [m] + [None] * (len(val) - 1)
    return m


@_rule("norm", "group_norm", "native_group_norm")
def group_norm(b: Builder, node) -> Any:
    x = node.args[0]
    name = op_name(node.target)
    if name == "aten.group_norm":
        groups, params = int(node.args[1]), [2, 3]
    else:  # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
        groups, params = int(node.args[6]), [1, 2]
    m = mapped(b, x)
    if m is not None and m.dim != 1:
        b.fix(m.atoms, "channels in a spatial position of a group norm")
        m = None
    if m is not None:
        if groups == 1:
            b.fix(m.atoms, "normalised together by a GroupNorm with one group")
        else:
            # a GroupNorm is pruned by whole groups: the other groups' statistics stay the same
            blocks = m.atoms.reshape(groups, -1)
            b.unify(blocks, blocks[:, :1])
            b.record("group_norm", 1, m.atoms, groups=groups)
    for i in params:
        p = node.args[i] if len(node.args) > i else None
        ref = b.val(p) if isinstance(p, torch.fx.Node) else None
        if isinstance(ref, ParamRef) and m is not None:
            b.unify(b.param_atoms(ref, 0, "param"), m.atoms)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [m] + [None] * (len(val) - 1)
    return m


@_rule("norm", "prelu", "_prelu_kernel")
def prelu(b: Builder, node) -> Any:
    x, w = node.args[0], node.args[1]
    m = mapped(b, x)
    ref = b.val(w)
    if isinstance(ref, ParamRef) and math.prod(ref.shape) > 1:
        if m is not None and m.dim == 1:
            b.unify(b.param_atoms(ref, 0, "param"), m.atoms)
        elif m is not None:
            b.fix(m.atoms, "PReLU weight on a different dimension")
    return m


# concatenation and splitting -----------------------------------------------------------------------------

@_rule("concat", "cat", "concat", "concatenate")
def cat(b: Builder, node) -> Any:
    tensors = list(node.args[0])
    out_shape = shape_of(node)
    d = norm_dim(int(arg(node, 1, "dim", 0)), len(out_shape))
    tensors = [t for t in tensors if shape_of(t) is not None and len(shape_of(t)) == len(out_shape)]
    maps = [mapped(b, t) for t in tensors]
    if any(m is not None and m.dim == d for m in maps):
        parts = []
        for t, m in zip(tensors, maps):
            if m is not None and m.dim == d:
                parts.append(m.atoms)
                continue
            if m is not None:
                b.fix(m.atoms, "concatenated with channels on another dimension")
            parts.append(b.new_fixed(shape_of(t)[d], "concatenated with a tensor without prunable channels"))
        return CMap(d, np.concatenate(parts))
    return merge_maps(b, [(m, shape_of(t)) for t, m in zip(tensors, maps)], out_shape, skip_dim=d,
                      what="concatenated")


@_rule("concat", "stack")
def stack(b: Builder, node) -> Any:
    tensors = list(node.args[0])
    out_shape = shape_of(node)
    d = norm_dim(int(arg(node, 1, "dim", 0)), len(out_shape))
    maps = []
    for t in tensors:
        m = mapped(b, t)
        if m is not None:
            m = CMap(m.dim + (1 if m.dim >= d else 0), m.atoms)
        shape = list(shape_of(t))
        shape.insert(d, 1)
        maps.append((m, tuple(shape)))
    return merge_maps(b, maps, out_shape, skip_dim=d, what="stacked")


@_rule("split", "split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split",
       "unsafe_split_with_sizes", "unsafe_chunk")
def split(b: Builder, node) -> Any:
    name = op_name(node.target)
    x = node.args[0]
    shape = shape_of(x)
    outs = node.meta["val"]
    if name == "aten.unbind":
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(shape))
    elif name == "aten.tensor_split":
        d = norm_dim(int(arg(node, 2, "dim", 0)), len(shape))
    else:
        d = norm_dim(int(arg(node, 2, "dim", 0)), len(shape))
    m = mapped(b, x)
    if m is None:
        return [None] * len(outs)
    if name == "aten.unbind":
        if m.dim == d:
            b.fix(m.atoms, "unbound into single channels")
            return [None] * len(outs)
        return [CMap(m.dim - (1 if m.dim > d else 0), m.atoms) for _ in outs]
    if m.dim != d:
        return [CMap(m.dim, m.atoms) for _ in outs]
    sizes = [int(o.shape[d]) for o in outs]
    pieces = np.split(m.atoms, np.cumsum(sizes)[:-1])
    if len(set(sizes)) == 1 and len(sizes) > 1:
        # Equal pieces (chunk(n)): the pieces keep equal sizes only if they lose the same positions.
        for p in pieces[1:]:
            b.unify(pieces[0], p)
    elif len(sizes) > 1:
        b.fix(m.atoms, "split into pieces of different constant sizes")
    return [CMap(d, p) for p in pieces]


OP_RULES["operator.getitem"] = ("split", lambda b, node: (
    b.val(node.args[0])[node.args[1]] if isinstance(b.val(node.args[0]), list) else None))


# reshaping -------------------------------------------------------------------------------------------------

def _align(a: tuple[int, ...], c: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of consecutive dimensions of two shapes that hold the same number of elements."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(c):
        ins, outs, pa, pc = [], [], 1, 1
        if i < len(a):
            ins, pa, i = [i], a[i], i + 1
        if j < len(c):
            outs, pc, j = [j], c[j], j + 1
        while pa != pc:
            if pa < pc and i < len(a):
                ins.append(i)
                pa, i = pa * a[i], i + 1
            elif pc < pa and j < len(c):
                outs.append(j)
                pc, j = pc * c[j], j + 1
            else:
                return []
        groups.append((ins, outs))
    return groups


def reshape_map(b: Builder, m: CMap | None, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> CMap | None:
    """Channels through view/reshape/flatten/unflatten/squeeze/unsqueeze.

    Merging the channel dimension with others repeats each channel's atom over its block (flatten
    before a linear layer). Splitting it keeps the channels on the *last* dimension that varies and
    couples the leading ones position by position: ``view(n, g, c // g, ...)`` (channel shuffle)
    must keep all ``g`` rows and drop the same columns from each.
    """
    if m is None:
        return None
    groups = _align(in_shape, out_shape)
    group = next(((ins, outs) for ins, outs in groups if m.dim in ins), None)
    if group is None or not group[1]:
        b.fix(m.atoms, "reshaped in a way edgeslim cannot follow")
        return None
    ins, outs = group
    sizes_in = [in_shape[d] for d in ins]
    sizes_out = [out_shape[d] for d in outs]
    bshape = [1] * len(ins)
    bshape[ins.index(m.dim)] = len(m.atoms)
    if math.prod(sizes_in) > 50_000_000:
        b.fix(m.atoms, "reshaped with too many positions to follow")
        return None
    grid = np.broadcast_to(m.atoms.reshape(bshape), sizes_in).reshape(sizes_out)
    varying = [ax for ax in range(grid.ndim) if grid.shape[ax] > 1 and
               not (grid == np.take(grid, [0], axis=ax)).all()]
    if varying:
        axis = varying[-1]
    else:  # a single channel spread over several dimensions
        axis = max((ax for ax in range(grid.ndim) if grid.shape[ax] > 1), default=grid.ndim - 1)
    rows = np.moveaxis(grid, axis, -1).reshape(-1, grid.shape[axis])
    if len(varying) > 1:
        b.unify(rows, rows[:1])  # leading factors keep all their positions, the last one loses channels
    return CMap(outs[axis], rows[0].copy())


@_rule("reshape", "view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
       "reshape_as", "squeeze_", "unsqueeze_", "_reshape_alias", "view_copy")
def reshape(b: Builder, node) -> Any:
    x = node.args[0]
    return reshape_map(b, mapped(b, x), shape_of(x), shape_of(node))


@_rule("reshape", "expand", "expand_as", "expand_copy", "broadcast_to")
def expand(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    in_shape, out_shape = shape_of(x), shape_of(node)
    od = m.dim + len(out_shape) - len(in_shape)
    if in_shape[m.dim] == 1 and out_shape[od] > 1:
        b.fix(m.atoms, "a single channel expanded to many")
        return None
    return CMap(od, m.atoms)


@_rule("reshape", "repeat")
def repeat(b: Builder, node) -> Any:
    x, repeats = node.args[0], list(node.args[1])
    m = mapped(b, x)
    if m is None:
        return None
    od = m.dim + len(repeats) - len(shape_of(x))
    return CMap(od, np.tile(m.atoms, repeats[od]))


@_rule("reshape", "permute", "permute_copy")
def permute(b: Builder, node) -> Any:
    m = mapped(b, node.args[0])
    if m is None:
        return None
    dims = [norm_dim(d, len(node.args[1])) for d in node.args[1]]
    return CMap(dims.index(m.dim), m.atoms)


@_rule("reshape", "transpose", "swapaxes", "swapdims", "transpose_copy", "t", "numpy_T", "movedim", "moveaxis")
def transpose(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    nd = len(shape_of(x))
    name = op_name(node.target)
    if name in ("aten.t", "aten.numpy_T"):
        perm = list(range(nd))[::-1]
    elif name in ("aten.movedim", "aten.moveaxis"):
        src, dst = node.args[1], node.args[2]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [norm_dim(s, nd) for s in src]
        dst = [norm_dim(s, nd) for s in dst]
        rest = [d for d in range(nd) if d not in src]
        perm = [None] * nd
        for s, t in zip(src, dst):
            perm[t] = s
        it = iter(rest)
        perm = [p if p is not None else next(it) for p in perm]
    else:
        d0, d1 = norm_dim(node.args[1], nd), norm_dim(node.args[2], nd)
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return CMap(perm.index(m.dim), m.atoms)


# indexing ------------------------------------------------------------------------------------------------

@_rule("index", "select", "select_copy")
def select(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    d = norm_dim(node.args[1], len(shape_of(x)))
    if d == m.dim:
        b.fix(m.atoms, "one channel selected by its position")
        return None
    return CMap(m.dim - (1 if m.dim > d else 0), m.atoms)


@_rule("index", "slice", "narrow", "slice_copy")
def slice_(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    shape = shape_of(x)
    d = norm_dim(arg(node, 1, "dim", 0), len(shape))
    if d != m.dim:
        return CMap(m.dim, m.atoms)
    size = shape[d]
    if op_name(node.target) == "aten.narrow":
        start, length = int(node.args[2]), int(node.args[3])
        start = start % size
        end, step = start + length, 1
    else:
        start, end, step = arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
    sl = slice(start, end, step)
    kept = m.atoms[sl]
    if len(kept) == size:
        return CMap(m.dim, m.atoms)
    b.fix(m.atoms, "channels sliced with constant bounds")
    return CMap(m.dim, kept.copy())


@_rule("index", "index", "_unsafe_index", "index_select", "gather", "take_along_dim")
def index(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    name = op_name(node.target)
    if m is None:
        return None
    shape, out_shape = shape_of(x), shape_of(node)
    if name in ("aten.index_select", "aten.gather", "aten.take_along_dim"):
        d = norm_dim(node.args[1] if len(node.args) > 1 else 0, len(shape))
        if d == m.dim or out_shape is None or len(out_shape) != len(shape) or out_shape[m.dim] != shape[m.dim]:
            b.fix(m.atoms, "channels picked by an index tensor")
            return None
        return CMap(m.dim, m.atoms)
    indices = list(node.args[1])
    idx_dims = [d for d, i in enumerate(indices) if i is not None]
    if m.dim in idx_dims:
        b.fix(m.atoms, "channels picked by an index tensor")
        return None
    idx_shapes = [shape_of(indices[d]) for d in idx_dims]
    k = len(torch.broadcast_shapes(*idx_shapes)) if idx_shapes and all(s is not None for s in idx_shapes) else 0
    if idx_dims == list(range(idx_dims[0], idx_dims[-1] + 1)):
        new_dim = m.dim if m.dim < idx_dims[0] else m.dim - len(idx_dims) + k
    else:
        new_dim = k + sum(1 for d in range(m.dim) if d not in idx_dims)
    if out_shape is None or new_dim >= len(out_shape) or out_shape[new_dim] != len(m.atoms):
        b.fix(m.atoms, "advanced indexing edgeslim cannot follow")
        return None
    return CMap(new_dim, m.atoms)


@_rule("index", "embedding")
def embedding(b: Builder, node) -> Any:
    w = b.val(node.args[0])
    if not isinstance(w, ParamRef):
        return None
    return CMap(len(shape_of(node)) - 1, b.param_atoms(w, 1, "out"))


# spatial operators ------------------------------------------------------------------------------------------

def _spatial(spatial_dims: int) -> Rule:
    def rule(b: Builder, node) -> Any:
        x = node.args[0]
        m = mapped(b, x)
        val = node.meta.get("val")
        n_out = len(val) if isinstance(val, (list, tuple)) else 1
        if m is not None and m.dim >= len(shape_of(x)) - spatial_dims:
            b.fix(m.atoms, f"channels in a spatial position of {op_name(node.target)}")
            m = None
        return [m] * n_out if isinstance(val, (list, tuple)) else m

    return rule


for _k in (1, 2, 3):
    for _op in (f"max_pool{_k}d", f"avg_pool{_k}d", f"adaptive_avg_pool{_k}d", f"adaptive_max_pool{_k}d",
                f"max_pool{_k}d_with_indices", f"_adaptive_avg_pool{_k}d", f"lp_pool{_k}d", f"fractional_max_pool{_k}d",
                f"reflection_pad{_k}d", f"replication_pad{_k}d", f"max_unpool{_k}d"):
        OP_RULES[f"aten.{_op}"] = ("pool", _spatial(_k))
for _op in ("upsample_nearest1d", "upsample_linear1d", "_upsample_nearest_exact1d"):
    OP_RULES[f"aten.{_op}"] = ("pool", _spatial(1))
for _op in ("upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
            "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "grid_sampler_2d", "im2col", "col2im"):
    OP_RULES[f"aten.{_op}"] = ("pool", _spatial(2))
for _op in ("upsample_nearest3d", "upsample_trilinear3d", "_upsample_nearest_exact3d"):
    OP_RULES[f"aten.{_op}"] = ("pool", _spatial(3))


@_rule("permutation", "pixel_shuffle")
def pixel_shuffle(b: Builder, node) -> Any:
    m = mapped(b, node.args[0])
    r = int(node.args[1])
    shape = shape_of(node.args[0])
    if m is None:
        return None
    if m.dim != len(shape) - 3:
        b.fix(m.atoms, "pixel shuffle of a spatial dimension")
        return None
    blocks = m.atoms.reshape(-1, r * r)  # output channel c is made of input channels c*r^2 .. c*r^2+r^2-1
    b.unify(blocks, blocks[:, :1])
    return CMap(m.dim, blocks[:, 0].copy())


@_rule("permutation", "pixel_unshuffle")
def pixel_unshuffle(b: Builder, node) -> Any:
    m = mapped(b, node.args[0])
    r = int(node.args[1])
    shape = shape_of(node.args[0])
    if m is None:
        return None
    if m.dim != len(shape) - 3:
        b.fix(m.atoms, "pixel unshuffle of a spatial dimension")
        return None
    return CMap(m.dim, np.repeat(m.atoms, r * r))


@_rule("permutation", "channel_shuffle", "native_channel_shuffle")
def channel_shuffle(b: Builder, node) -> Any:
    m = mapped(b, node.args[0])
    groups = int(node.args[1])
    if m is None:
        return None
    if m.dim != 1:
        b.fix(m.atoms, "channel shuffle of a non-channel dimension")
        return None
    grid = m.atoms.reshape(groups, -1)
    b.unify(grid, grid[:1])  # every group must keep the same positions
    return CMap(1, grid.T.ravel().copy())


@_rule("permutation", "roll")
def roll(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    dims = arg(node, 2, "dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    nd = len(shape_of(x))
    if not dims or m.dim in [norm_dim(d, nd) for d in dims]:
        b.fix(m.atoms, "channels rolled by a constant shift")
    return m


@_rule("permutation", "flip")
def flip(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    nd = len(shape_of(x))
    if m.dim in [norm_dim(d, nd) for d in node.args[1]]:
        return CMap(m.dim, m.atoms[::-1].copy())  # reversing commutes with removing channels
    return m


# reductions ---------------------------------------------------------------------------------------------------

def _reduce(dim_index: int | None, keepdim_index: int | None) -> Rule:
    def rule(b: Builder, node) -> Any:
        if len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node):
            return elementwise(b, node)  # max.other / min.other: elementwise maximum of two tensors
        x = node.args[0]
        m = mapped(b, x)
        val = node.meta.get("val")
        n_out = len(val) if isinstance(val, (list, tuple)) else 1
        if m is None:
            return [None] * n_out if isinstance(val, (list, tuple)) else None
        nd = len(shape_of(x))
        dims = arg(node, dim_index, "dim") if dim_index is not None else None
        if dims is None or dims == []:
            dims = list(range(nd))
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [norm_dim(d, nd) for d in dims]
        keep = bool(arg(node, keepdim_index, "keepdim", False)) if keepdim_index is not None else False
        if m.dim in dims:
            b.fix(m.atoms, f"reduced over channels by {op_name(node.target)}")
            out = None
        else:
            out = CMap(m.dim if keep else m.dim - sum(d < m.dim for d in dims), m.atoms)
        return [out] * n_out if isinstance(val, (list, tuple)) else out

    return rule


for _op in ("mean", "sum", "amax", "amin", "nansum", "nanmean", "logsumexp", "any", "all", "count_nonzero"):
    OP_RULES[f"aten.{_op}"] = ("reduction", _reduce(1, 2))
for _op in ("max", "min", "argmax", "argmin", "prod", "median", "nanmedian", "mode", "kthvalue"):
    OP_RULES[f"aten.{_op}"] = ("reduction", _reduce(1, 2))
for _op in ("var", "std", "var_mean", "std_mean"):
    OP_RULES[f"aten.{_op}"] = ("reduction", _reduce(1, 3))
OP_RULES["aten.linalg_vector_norm"] = ("reduction", _reduce(2, 3))
OP_RULES["aten.norm"] = ("reduction", _reduce(2, 3))
@_rule("reduction", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "softmax", "log_softmax", "_softmax",
       "_log_softmax", "_safe_softmax", "sort", "argsort", "topk")
def along_dim(b: Builder, node) -> Any:
    """Operators along one dimension that keep the shape: fine unless that dimension holds the channels."""
    x = node.args[0]
    m = mapped(b, x)
    val = node.meta.get("val")
    n_out = len(val) if isinstance(val, (list, tuple)) else 1
    name = op_name(node.target)
    if m is not None:
        d = arg(node, 2, "dim", -1) if name == "aten.topk" else arg(node, 1, "dim", -1)
        if d is None or norm_dim(int(d), len(shape_of(x))) == m.dim:
            b.fix(m.atoms, f"{name} across channels")
            if name in ("aten.sort", "aten.topk", "aten.argsort"):
                m = None  # the output positions are ranks, not channels
    return [m] * n_out if isinstance(val, (list, tuple)) else m


# padding ---------------------------------------------------------------------------------------------------

@_rule("pad", "pad", "constant_pad_nd")
def pad(b: Builder, node) -> Any:
    x = node.args[0]
    m = mapped(b, x)
    if m is None:
        return None
    amounts = list(node.args[1])
    mode = arg(node, 2, "mode", "constant") if op_name(node.target) == "aten.pad" else "constant"
    nd = len(shape_of(x))
    padded = {nd - 1 - i // 2: (amounts[i], amounts[i + 1]) for i in range(0, len(amounts), 2)}
    if m.dim not in padded or padded[m.dim] == (0, 0):
        return m
    front, back = padded[m.dim]
    if mode != "constant" or front < 0 or back < 0:
        b.fix(m.atoms, f"{mode} padding of the channels")
        return None
    zeros_front, zeros_back = b.new(front), b.new(back)
    out = np.concatenate([zeros_front, m.atoms, zeros_back])
    try:
        rule = module_rule_for(b.model.get_submodule(b.module)) if b.module else None
    except AttributeError:
        rule = None
    if rule is not None and "pad" in rule.handles_ops:
        b.record("pad", m.dim, out, front=front, back=back)  # the module's surgeon rewrites the amounts
    else:
        b.fix(np.concatenate([zeros_front, zeros_back]), "channel padding by constant amounts in forward()")
    return CMap(m.dim, out)


# running a node ------------------------------------------------------------------------------------------------

def _tags(target) -> set:
    try:
        return set(getattr(target, "tags", ()))
    except Exception:
        return set()


def rule_for(node) -> tuple[str, Rule | None]:
    name = op_name(node.target)
    if name in OP_RULES:
        return OP_RULES[name]
    if torch.Tag.pointwise in _tags(node.target):
        return "elementwise", elementwise
    return "unsupported", None


def _module_type(b: Builder) -> str:
    try:
        return type(b.model.get_submodule(b.module)).__name__ if b.module else type(b.model).__name__
    except AttributeError:
        return "?"


def run_op(b: Builder, node) -> None:
    category, rule = rule_for(node)
    name = op_name(node.target)
    module_type = _module_type(b)
    b.coverage.append({"op": name, "module": b.module, "module_type": module_type, "category": category,
                       "mode": b.phase})
    if rule is None:
        touched = [b.as_map(b.val(a)) for a in node.all_input_nodes]
        atoms = [m.atoms for m in touched if m is not None]
        if atoms:
            b.unsupported(np.concatenate(atoms))
            b.fix(np.concatenate(atoms), f"unsupported operator {name}")
        else:
            b.coverage[-1]["category"] = "no channels (unsupported op)"
        val = node.meta.get("val")
        b.values[node] = [None] * len(val) if isinstance(val, (list, tuple)) else None
        return
    b.values[node] = rule(b, node)


# module rules -------------------------------------------------------------------------------------------------

class ModuleRule:
    """Knowledge about a module type.

    ``whole_module``: trace each call of the module as one box with :meth:`trace` instead of its
    operators. ``handles_ops``: operators inside the module whose channel-count constants
    :meth:`rewrite` updates after surgery (e.g. ``"pad"``). :meth:`rewrite` gets the module with its
    parameters already sliced and returns it (or a replacement) with consistent attributes.
    """

    whole_module = False
    handles_ops: frozenset[str] = frozenset()

    def trace(self, b: Builder, module: nn.Module, path: str, inputs: list, outputs: list) -> dict:
        raise NotImplementedError

    def rewrite(self, module: nn.Module, ops: list[dict]) -> nn.Module:
        return module


MODULE_RULES: list[tuple[type, ModuleRule]] = []


def register_module_rule(module_type: type, rule: ModuleRule) -> None:
    """Register (or replace) the rule of a module type; later registrations win over earlier ones."""
    MODULE_RULES[:] = [(t, r) for t, r in MODULE_RULES if t is not module_type]
    MODULE_RULES.insert(0, (module_type, rule))


def module_rule_for(module: nn.Module) -> ModuleRule | None:
    for t, rule in MODULE_RULES:
        if isinstance(module, t):
            return rule
    return None


def run_box(b: Builder, box) -> None:
    """A module handled as a whole: an ignored module (channels fixed) or one with a whole-module rule."""
    # the module's own parameters are handled by its rule; inputs are the activations it reads
    inputs = [n for n in box.inputs() if not isinstance(b.values.get(n), ParamRef)]
    outputs = box.outputs()
    b.module = box.path
    if box.rule is None:
        b.coverage.append({"op": f"module {type(box.module).__name__}", "module": box.path,
                           "module_type": type(box.module).__name__, "category": "ignored",
                           "mode": b.phase})
        for n in inputs:
            m = b.as_map(b.val(n))
            b.fix(m.atoms if m else None, "ignored module")
        for n in outputs:
            shape = shape_of(n)
            b.values[n] = CMap(1, b.new_fixed(shape[1], "output of an ignored module")) if shape and len(shape) > 1 else None
        return
    b.coverage.append({"op": f"module {type(box.module).__name__}", "module": box.path,
                       "module_type": type(box.module).__name__, "category": "module rule",
                       "mode": b.phase})
    b.node = box.first
    results = box.rule.trace(b, box.module, box.path, inputs, outputs)
    for n in outputs:
        b.values[n] = results.get(n)
