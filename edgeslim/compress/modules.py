"""Module rules: tracing whole modules (multi-head attention) and rewriting module attributes that
``forward()`` uses after surgery (``out_channels``, ``groups``, ``num_features``, padding sizes ...)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.cifar import PadShortcut
from .rules import ModuleRule, register_module_rule
from .trace import Builder, CMap, shape_of

__all__ = ["SlimMultiheadAttention"]


class SlimMultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention whose inner width (``num_heads * head_dim``) may differ from ``embed_dim``.

    ``nn.MultiheadAttention`` ties the two together, so a model with pruned heads needs this module.
    It takes the same arguments, returns the same outputs and keeps each head's ``head_dim`` (so
    the softmax scale stays 1/sqrt(head_dim)). Attention weights, when asked for, are averaged over
    the remaining heads.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False):
        nn.Module.__init__(self)
        inner = num_heads * head_dim
        self.embed_dim, self.kdim, self.vdim = embed_dim, embed_dim, embed_dim
        self._qkv_same_embed_dim = True
        self.num_heads, self.head_dim, self.dropout, self.batch_first = num_heads, head_dim, dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        if not bias:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(inner, embed_dim, bias=bias)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        L, N, _ = query.shape
        S = key.shape[0]
        H, D = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x, w, b, length):  # (length, N, E) -> (N, H, length, D)
            return F.linear(x, w, b).reshape(length, N, H, D).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q, L), heads(key, w_k, b_k, S), heads(value, w_v, b_v, S)
        mask = self._merged_mask(attn_mask, key_padding_mask, N, L, S, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(D)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
            weights = None
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, H * D))
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def _merged_mask(self, attn_mask, key_padding_mask, N, L, S, dtype):
        def additive(m):
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                raise ValueError("SlimMultiheadAttention: per-head (3-D) attention masks are not supported after "
                                 "heads were pruned; pass a 2-D mask")
            mask = additive(attn_mask).view(1, 1, L, S)
        if key_padding_mask is not None:
            kpm = additive(key_padding_mask).view(N, 1, 1, S)
            mask = kpm if mask is None else mask + kpm
        return mask

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class MultiheadAttentionRule(ModuleRule):
    """``nn.MultiheadAttention`` traced as a whole: its heads are a channel group (pruned whole,
    so ``head_dim`` and the softmax scale stay), its input and output widths are channels."""

    whole_module = True

    def trace(self, b: Builder, mha: nn.MultiheadAttention, path: str, inputs: list, outputs: list) -> dict:
        pre = f"{path}." if path else ""
        supported = (mha._qkv_same_embed_dim and mha.bias_k is None and mha.bias_v is None
                     and mha.in_proj_weight is not None)
        if not supported:
            for n in inputs:
                m = b.as_map(b.val(n))
                b.fix(m.atoms if m else None, "MultiheadAttention with kdim/vdim or bias_k/bias_v")
            return {}
        inner, E = mha.in_proj_weight.shape
        inner //= 3
        D = mha.head_dim
        H = inner // D
        in_cols = b.param_atoms(f"{pre}in_proj_weight", 1, "in")
        tokens = []
        for n in inputs:
            m = b.as_map(b.val(n))
            shape = shape_of(n)
            if shape is not None and shape[-1] == E and len(shape) in (2, 3):
                tokens.append(math.prod(shape[:-1]))
            if m is None:
                continue
            if m.dim == len(shape) - 1 and len(m.atoms) == E:
                b.unify(m.atoms, in_cols)
            else:
                b.fix(m.atoms, "channels on a token dimension of multi-head attention")
        rows = b.param_atoms(f"{pre}in_proj_weight", 0, "out").reshape(3, H, D)
        head = rows[0, :, :1]  # one atom per head
        b.unify(rows, head[None])
        if mha.in_proj_bias is not None:
            b.unify(b.param_atoms(f"{pre}in_proj_bias", 0, "param").reshape(3, H, D), head[None])
        out_cols = b.param_atoms(f"{pre}out_proj.weight", 1, "in")
        b.unify(out_cols.reshape(H, D), head)
        out_rows = b.param_atoms(f"{pre}out_proj.weight", 0, "out")
        if mha.out_proj.bias is not None:
            b.unify(b.param_atoms(f"{pre}out_proj.bias", 0, "param"), out_rows)
        results, main = {}, None
        for n in outputs:
            shape = shape_of(n)
            if main is None and shape is not None and shape[-1] == E and len(shape) in (2, 3):
                main = n
                results[n] = CMap(len(shape) - 1, out_rows)
            else:  # attention weights, averaged over the heads
                b.fix(head, "attention weights (averaged over heads) are used")
        q_tokens = tokens[0] if tokens else 0
        batch = 1
        for n in inputs[:1]:
            shape = shape_of(n)
            if shape is not None and len(shape) == 3:
                batch = shape[0] if mha.batch_first else shape[1]
        seq = q_tokens // max(batch, 1)
        b.mac(q_tokens * 3 * inner * E, in_cols, rows.ravel())
        b.mac(2 * batch * seq * seq * inner, out_cols)
        b.mac(q_tokens * E * inner, out_cols, out_rows)
        return results

    def rewrite(self, mha: nn.MultiheadAttention, ops: list[dict]) -> nn.Module:
        inner3, E = mha.in_proj_weight.shape
        D = mha.head_dim
        H = inner3 // 3 // D
        if E == mha.embed_dim and H == mha.num_heads and H * D == E and type(mha) is nn.MultiheadAttention:
            return mha
        slim = SlimMultiheadAttention(E, H, D, mha.dropout, mha.in_proj_bias is not None, mha.batch_first)
        slim.in_proj_weight = mha.in_proj_weight
        slim.in_proj_bias = mha.in_proj_bias
        slim.out_proj = mha.out_proj
        slim.train(mha.training)
        return slim


class PadShortcutRule(ModuleRule):
    """edgeslim's option-A shortcut: the zero channels it pads with are prunable like any channel."""

    handles_ops = frozenset({"pad"})

    def rewrite(self, module: PadShortcut, ops: list[dict]) -> nn.Module:
        for op in ops:
            if op["op"] == "pad":
                keep = np.asarray(op["keep"])
                module.pad_front = int((keep < op["front"]).sum())
                module.pad_back = int((keep >= op["size"] - op["back"]).sum())
        return module


class ConvRule(ModuleRule):
    def rewrite(self, conv: nn.modules.conv._ConvNd, ops: list[dict]) -> nn.Module:
        w = conv.weight
        g = conv.groups
        if conv.transposed:
            new_in = w.shape[0]
            g_new = 1 if g == 1 else g * new_in // conv.in_channels
            conv.in_channels, conv.out_channels = new_in, w.shape[1] * g_new
        else:
            new_out = w.shape[0]
            g_new = 1 if g == 1 else g * new_out // conv.out_channels
            conv.out_channels, conv.in_channels = new_out, w.shape[1] * g_new
        conv.groups = g_new
        return conv


class LinearRule(ModuleRule):
    def rewrite(self, linear: nn.Linear, ops: list[dict]) -> nn.Module:
        linear.out_features, linear.in_features = linear.weight.shape
        return linear


class NormRule(ModuleRule):
    """BatchNorm / InstanceNorm: one statistic per channel."""

    def rewrite(self, bn, ops: list[dict]) -> nn.Module:
        for t in (bn.weight, bn.running_mean):
            if t is not None:
                bn.num_features = t.shape[0]
                break
        return bn


class GroupNormRule(ModuleRule):
    def rewrite(self, gn: nn.GroupNorm, ops: list[dict]) -> nn.Module:
        for op in ops:
            if op["op"] == "group_norm":
                kept = len(op["keep"])
                gn.num_groups = gn.num_groups * kept // op["size"]
                gn.num_channels = kept
        if gn.weight is not None:
            gn.num_channels = gn.weight.shape[0]
        return gn


class LayerNormRule(ModuleRule):
    def rewrite(self, ln: nn.LayerNorm, ops: list[dict]) -> nn.Module:
        if ln.weight is not None:
            ln.normalized_shape = tuple(ln.weight.shape)
        return ln


class PReLURule(ModuleRule):
    def rewrite(self, m: nn.PReLU, ops: list[dict]) -> nn.Module:
        m.num_parameters = m.weight.numel()
        return m


class EmbeddingRule(ModuleRule):
    def rewrite(self, m: nn.Embedding, ops: list[dict]) -> nn.Module:
        m.num_embeddings, m.embedding_dim = m.weight.shape
        return m


for _type, _rule in [
    (nn.modules.conv._ConvNd, ConvRule()), (nn.Linear, LinearRule()),
    (nn.modules.batchnorm._BatchNorm, NormRule()), (nn.modules.instancenorm._InstanceNorm, NormRule()),
    (nn.GroupNorm, GroupNormRule()), (nn.LayerNorm, LayerNormRule()), (nn.PReLU, PReLURule()),
    (nn.Embedding, EmbeddingRule()), (nn.MultiheadAttention, MultiheadAttentionRule()),
    (PadShortcut, PadShortcutRule()),
]:
    register_module_rule(_type, _rule)
