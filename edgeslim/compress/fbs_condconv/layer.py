"""The FBS-CondConv block: conv (E experts) -> BN -> FBS gate -> activation (specs/seed-raju.md A.2, A.3, E).

One module covers the four forms of the thesis:

* ``experts=1, density=None``: a plain conv-BN-act block;
* ``experts=1, density=d``: FBS (Gao et al. 2019) on a standard convolution;
* ``experts=E, density=None``: CondConv (Yang et al. 2019), E input-dependent expert kernels;
* ``experts=E, density=d``: FBS-pruned CondConv (Raju 2022, chapter 3).

The gate multiplies the *normalised and shifted* conv output, ``act(pi * BN(conv))`` with the BN
scale gamma frozen (pi takes its role), so a suppressed channel is exactly 0 after BN, bias and
activation whenever act(0) = 0. The thesis's literal ``act(pi * norm + beta)`` would leave act(beta)
in suppressed channels (spec A.11, point 1) and destroy the input sparsity of the next layer.

Two execution paths that compute the same function:

* ``mask`` (training, and batched inference/export): every example's full CondConv kernel is built,
  the whole conv runs, and suppressed channels are multiplied by 0. Exact, and no faster than dense.
* ``skip`` (inference): per example, only the kept output rows and the non-zero input channels of
  each expert are gathered and combined, and only that sub-convolution runs ("combine only the
  surviving kernel slices", spec E.6 and E.11). Suppressed outputs are written as zeros.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FBSCondConv", "gate_width", "fbs_layers", "execution", "PREDICTOR_ACTIVATIONS"]

PREDICTOR_ACTIVATIONS = {"relu": F.relu, "swish": F.silu}
EXECUTIONS = ("mask", "skip")


def gate_width(density: float | None, channels: int) -> int:
    """k = ceil(d * C) channels kept by the winner-take-all (robust to float noise such as 0.7 * 10)."""
    if density is None:
        return channels
    return min(channels, max(1, math.ceil(round(density * channels, 6))))


class FBSCondConv(nn.Module):
    """conv (``experts`` kernels mixed per example) -> BatchNorm -> FBS gate (top-k) -> activation.

    Attributes set by every forward pass (for the Lasso regulariser and usage statistics):
    ``saliency`` (B, C_out) the pre-wta predictor output g, ``gate`` (B, C_out) pi = wta_k(g),
    ``alpha`` (B, E) the routing weights (None when ``experts == 1``).
    """

    GROUPED_MIN_PIXELS = 49  # input maps of at least 7x7: per-example grouped convolution (see _condconv)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride=1,
                 padding=0, dilation=1, *, experts: int = 4, density: float | None = 0.5,
                 activation: nn.Module | None = None, predictor_activation: str = "relu", norm: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if experts < 1:
            raise ValueError(f"experts must be >= 1, got {experts}")
        if density is not None and not 0 < density <= 1:
            raise ValueError(f"gate density must be in (0, 1], got {density} (fraction of output channels kept)")
        if predictor_activation not in PREDICTOR_ACTIVATIONS:
            raise ValueError(f"predictor_activation must be one of {sorted(PREDICTOR_ACTIVATIONS)}, "
                             f"got {predictor_activation!r}")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.experts, self.density, self.predictor_activation = experts, density, predictor_activation
        self.k = gate_width(density, out_channels)
        self.execution = "mask"

        # (C_out, C_in, E, kh, kw): the expert axis sits inside each (output, input) slice, so the skip path
        # gathers kept rows and active columns as contiguous blocks. He init (fan-in, as M-CifarNet), every
        # expert drawn independently.
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, experts, kh, kw)
                                   * math.sqrt(2.0 / (in_channels * kh * kw)))
        # CondConv routing: GAP -> FC(C_in -> E) -> sigmoid (Eq. 3.3; bias as in the original CondConv).
        self.router = nn.Linear(in_channels, experts) if experts > 1 else None
        # FBS saliency predictor: l1 mean -> FC(C_in -> C_out) -> act (Eq. 3.5, 3.6). The bias starts at 1
        # so every saliency starts positive and near 1: the gate first behaves like a plain top-k mask.
        self.predictor = nn.Linear(in_channels, out_channels) if density is not None else None
        if self.predictor is not None:
            nn.init.ones_(self.predictor.bias)
        if norm:
            self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
            self.bias = None
            if self.gated:
                self.bn.weight.requires_grad_(False)  # gamma is replaced by the gate pi (spec E.1)
        else:
            self.bn = None
            self.bias = nn.Parameter(torch.zeros(out_channels))
        self.activation = activation if activation is not None else nn.Identity()
        self.saliency: torch.Tensor | None = None
        self.gate: torch.Tensor | None = None
        self.alpha: torch.Tensor | None = None

    def __getstate__(self):
        # The recorded tensors of the last forward pass may carry autograd history: never copy or pickle them.
        state = self.__dict__.copy()
        state.update(saliency=None, gate=None, alpha=None)
        return state

    @property
    def gated(self) -> bool:
        return self.density is not None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, experts={self.experts}, density={self.density}, k={self.k}, "
                f"predictor_activation={self.predictor_activation}, execution={self.execution}")

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.execution == "skip" and not self.training:
            outputs, records = [], []
            for b in range(x.shape[0]):
                outputs.append(self._forward_skip(x[b:b + 1]))
                records.append((self.saliency, self.gate, self.alpha))
            if self.gated:
                self.saliency = torch.cat([r[0] for r in records])
                self.gate = torch.cat([r[1] for r in records])
            if self.experts > 1:
                self.alpha = torch.cat([r[2] for r in records])
            return torch.cat(outputs)
        return self._forward_mask(x)

    def _saliency(self, pooled_l1: torch.Tensor) -> torch.Tensor:
        return PREDICTOR_ACTIVATIONS[self.predictor_activation](self.predictor(pooled_l1))

    def _routing(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.router(pooled))

    def _normalise(self, y: torch.Tensor) -> torch.Tensor:
        return self.bn(y) if self.bn is not None else y + self.bias[:, None, None]

    def _forward_mask(self, x: torch.Tensor) -> torch.Tensor:
        if self.experts == 1:
            self.alpha = None
            y = F.conv2d(x, self.weight.squeeze(2), None, self.stride, self.padding, self.dilation)
        else:
            self.alpha = self._routing(x.mean((2, 3)))
            y = self._condconv(x, self.alpha)
        y = self._normalise(y)
        if self.gated:
            self.saliency = self._saliency(x.abs().mean((2, 3)))
            kept, index = self.saliency.topk(self.k, dim=1)
            # wta: kept entries keep their value (boosting) and their gradient; the rest are exactly 0.
            self.gate = torch.zeros_like(self.saliency).scatter(1, index, kept)
            y = y * self.gate[:, :, None, None]
        return self.activation(y)

    @staticmethod
    def _expert_major(weight: torch.Tensor) -> torch.Tensor:
        """(C_out, C_in, E, kh, kw) -> (E, C_out * C_in * kh * kw): mixing the experts is then one matrix
        product (an ONNX MatMul, on a constant-folded initializer in the batched path)."""
        return weight.permute(2, 0, 1, 3, 4).reshape(weight.shape[2], -1)

    def _condconv(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """conv(x_b, sum_e alpha_be W_e) for every example b, in one of two exact formulations.

        On large feature maps (or batch 1): build each example's kernel and run one grouped convolution with
        a group per example (Eq. 3.2, one convolution after combining). On small maps the per-example
        matrix products are too small to run fast on a CPU; there, by linearity, run all E experts as one
        wide convolution and mix its outputs (E times the MACs, but large efficient products).
        """
        batch = x.shape[0]
        if batch == 1 or x.shape[2] * x.shape[3] >= self.GROUPED_MIN_PIXELS:
            kernels = (alpha @ self._expert_major(self.weight)).reshape(
                batch * self.out_channels, self.in_channels, *self.kernel_size)
            y = F.conv2d(x.reshape(1, batch * self.in_channels, *x.shape[2:]), kernels, None, self.stride,
                         self.padding, self.dilation, groups=batch)
            return y.reshape(batch, self.out_channels, *y.shape[2:])
        experts = self.weight.permute(2, 0, 1, 3, 4).reshape(-1, self.in_channels, *self.kernel_size)
        y = F.conv2d(x, experts, None, self.stride, self.padding, self.dilation)
        y = y.reshape(batch, self.experts, self.out_channels, *y.shape[2:])
        return (y * alpha[:, :, None, None, None]).sum(1)

    def folded_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference BN (or bias) as ``y * scale + shift`` per output channel."""
        if self.bn is None:
            return torch.ones_like(self.bias), self.bias
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        return scale, self.bn.bias - self.bn.running_mean * scale

    def _forward_skip(self, x: torch.Tensor) -> torch.Tensor:
        """One example (batch 1): compute only kept outputs from the non-zero inputs.

        The saliency predictor and the router read the pooled input of all channels (zeros included):
        they are tiny, and gathering their weight columns would cost more than it saves.
        """
        pooled_l1 = x.abs().mean((2, 3))
        # Input channels the previous gate did not suppress. The busiest channel always counts, so that an
        # all-zero input gives a (zero) convolution rather than an empty one.
        busiest = torch.arange(self.in_channels, device=x.device) == pooled_l1[0].argmax()
        active = torch.nonzero((pooled_l1[0] > 0) | busiest).flatten()
        weight = self.weight
        scale, shift = self.folded_affine()
        if self.gated:
            self.saliency = self._saliency(pooled_l1)
            kept, keep = self.saliency[0].topk(self.k)
            self.gate = torch.zeros_like(self.saliency).scatter(1, keep[None], kept[None])
            weight = weight.index_select(0, keep)
            scale, shift = scale.index_select(0, keep) * kept, shift.index_select(0, keep) * kept
        weight = weight.index_select(1, active)  # (k, n_in, E, kh, kw): only the surviving slices
        if self.experts == 1:
            self.alpha = None
            kernel = weight.squeeze(2)
        else:
            self.alpha = self._routing(x.mean((2, 3)))
            kernel = (self.alpha @ self._expert_major(weight)).reshape(weight.shape[0], weight.shape[1],
                                                                        *self.kernel_size)
        y = F.conv2d(x.index_select(1, active), kernel, None, self.stride, self.padding, self.dilation)
        y = self.activation(y * scale[:, None, None] + shift[:, None, None])
        if not self.gated:
            return y
        out = y.new_zeros(1, self.out_channels, *y.shape[2:])
        out[:, keep] = y
        return out


def fbs_layers(model: nn.Module) -> list[tuple[str, FBSCondConv]]:
    """The FBS-CondConv blocks of ``model`` in definition order, with their module paths."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FBSCondConv)]


@contextmanager
def execution(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily run every FBS-CondConv block of ``model`` with ``mode`` ("mask" or "skip")."""
    if mode not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {mode!r}")
    layers = [m for _, m in fbs_layers(model)]
    before = [m.execution for m in layers]
    for m in layers:
        m.execution = mode
    try:
        yield model
    finally:
        for m, mode_before in zip(layers, before):
            m.execution = mode_before
