"""A small Vision Transformer for 32x32 inputs, the PatchDrop model (specs/seed-raju.md section C).

Standard pre-norm ViT (the thesis's post-norm equations are ambiguous, spec C.1): patch embedding,
a CLS token, learned positional embeddings, ``depth`` blocks of multi-head self-attention and a GELU
MLP, a final LayerNorm and a linear head on the CLS token. No dropout or stochastic depth (as the
thesis's ViT). ``forward(x, keep)`` takes an optional (batch, K) tensor of patch positions to keep:
the other patch tokens are removed *after* the positional embedding (PatchDrop), the CLS token is
always kept, and the encoder then runs on K + 1 tokens. Without ``keep`` all patches are used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisionTransformer"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if return_attention:  # explicit softmax: the weights are the output (saliency)
            attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
            out = attn @ v
        else:
            attn, out = None, F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return (out, attn) if return_attention else out


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if return_attention:
            out, attn = self.attn(self.norm1(x), return_attention=True)
            x = x + out
            return x + self.mlp(self.norm2(x)), attn
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, image_size: int = 32, patch: int = 4, dim: int = 96, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 2.0, in_channels: int = 3):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} must be a multiple of the patch size {patch}")
        self.grid = image_size // patch
        self.num_patches = self.grid ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """CLS + patch tokens with positional embeddings; only the ``keep`` patches when given."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if keep is not None:  # PatchDrop: remove the dropped tokens after the positional embedding
            patches = patches.gather(1, keep.to(patches.device)[..., None].expand(-1, -1, patches.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        z = self.tokens(x, keep)
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z[:, 0]))

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, patches) attention of the CLS token to every patch in the last block, averaged over heads."""
        z = self.tokens(x)
        for block in self.blocks[:-1]:
            z = block(z)
        _, attn = self.blocks[-1](z, return_attention=True)
        return attn[:, :, 0, 1:].mean(1)
