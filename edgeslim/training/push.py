"""Deep-LDA pushing (Tian 2020, ch. 4; specs/seed-tian.md section 2.2).

``PushLoss`` is a training ``Callback`` that adds ``gamma * l_lda + lam * l_cov + beta * l_align``
(eq. 4.6, 4.7, 4.9, 4.10) to the loss of every batch. The terms are computed on the final latent
space (the input of the decision layer, after ReLU), read with a forward hook:

* ``l_lda = (C - 1) / trace((Sw + eps I)^-1 Sb)``: the reciprocal of the mean generalised eigenvalue
  of the pencil (Sb, Sw + eps I). Sb has rank at most C - 1 for C classes in the batch, so only C - 1
  eigenvalues are non-zero and their sum is the trace above: no eigendecomposition is needed and the
  gradient is stable. ``eps = ridge * trace(Sw) / d`` is the thesis's identity multiple (L784).
* ``l_cov = ||Sa - diag(Sa)||_1 / (n d (d - 1))``: the mean absolute off-diagonal entry of the
  total covariance (the scatter over the batch size n, as the thesis's figure 4-5 shows it).
* ``l_align = ||A - diag(A)||_1 / (d (d - 1))`` with ``A = (Sw + eps I)^-1 Sb``.

The thesis's L1 norms are sums; dividing them by the number of entries (and the scatter by n) is a
constant factor that ``lam`` and ``beta`` absorb, and it keeps their meaning when the batch size or
the latent width d changes (d shrinks from one pruning step to the next).

The thesis gives no values for gamma, lam, beta or the ridge; the defaults here were chosen on
digits with ``benchmarks/lda_digits.py`` (see the README).

Batch scatter is meaningless unless every class in a batch has several samples: train with
``ClassBalancedBatchSampler`` (>= 8 per class, a random subset of classes per batch when they do
not all fit), which ``PushLoss`` installs through ``Callback.batch_sampler``.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import Sampler

from ..compress.criteria.lda import find_decision_layer, scatter_matrices
from .loop import Callback, TrainState

__all__ = ["push_terms", "PushLoss", "ClassBalancedBatchSampler"]


def push_terms(h: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3, align: bool = True) -> dict[str, torch.Tensor]:
    """The three push terms for latent features ``h`` (n, d) of a labelled batch (differentiable)."""
    within, between, total = scatter_matrices(h, y)
    d = h.shape[1]
    classes = len(torch.unique(y))
    eye = torch.eye(d, dtype=h.dtype, device=h.device)
    eps = ridge * torch.trace(within).detach().clamp_min(1e-8) / d
    ratio = torch.linalg.solve(within + eps * eye, between)          # (Sw + eps I)^-1 Sb
    mean_eig = torch.trace(ratio) / max(1, classes - 1)
    off = lambda m: (m - torch.diag(torch.diagonal(m))).abs().sum() / max(1, d * (d - 1))  # mean |off-diagonal|
    terms = {"lda": 1.0 / mean_eig.clamp_min(1e-8), "cov": off(total) / len(h)}
    terms["align"] = off(ratio) if align else h.new_zeros(())
    return terms


class PushLoss(Callback):
    """Adds the push objective to training (eq. 4.10). ``model`` is the model being trained.

    ``decision``: path of the decision layer whose input is the latent space (default: the last
    ``nn.Linear`` that runs). ``per_class``: samples per class in every batch (>= 8, thesis L784);
    ``balanced=False`` keeps the loop's ordinary shuffled batches. The per-epoch means of the terms
    are added to the epoch record as ``push_lda``, ``push_cov`` and ``push_align``.
    """

    def __init__(self, model: nn.Module, gamma: float = 1.0, lam: float = 0.1, beta: float = 0.0,
                 ridge: float = 1e-3, decision: str | None = None, balanced: bool = True, per_class: int = 8,
                 example: torch.Tensor | None = None):
        if min(gamma, lam, beta) < 0 or ridge <= 0:
            raise ValueError("push weights gamma, lam, beta must be >= 0 and ridge > 0")
        if per_class < 2:
            raise ValueError("per_class must be >= 2 (the thesis uses >= 8) for a within-class scatter to exist")
        self.gamma, self.lam, self.beta, self.ridge = gamma, lam, beta, ridge
        self.balanced, self.per_class = balanced, per_class
        if decision is None:
            if example is None:
                raise ValueError("PushLoss needs decision='path' or an example input to find the decision layer")
            decision = find_decision_layer(model, example)
        self.decision = decision
        self.module = model.get_submodule(decision)
        self.latent: torch.Tensor | None = None
        self.handle = None
        self._sums: dict[str, float] = {}
        self._batches = 0

    def _keep(self, _module, args):
        if torch.is_grad_enabled():
            self.latent = args[0].flatten(1)

    def batch_sampler(self, state: TrainState) -> Sampler | None:
        if not self.balanced:
            return None
        from ..data import targets_of

        return ClassBalancedBatchSampler(targets_of(state.train_set), state.config.batch_size, self.per_class,
                                         seed=state.config.seed, epoch=state.epoch)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.handle is None:
            self.handle = self.module.register_forward_pre_hook(self._keep)
        self._sums, self._batches = {}, 0

    def extra_loss(self, state, x, y, logits):
        h, self.latent = self.latent, None
        if h is None or len(torch.unique(y)) < 2:
            return None  # a batch of one class has no between-class scatter
        terms = push_terms(h.float(), y, self.ridge, align=self.beta > 0)
        for k, v in terms.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
        self._batches += 1
        return self.gamma * terms["lda"] + self.lam * terms["cov"] + self.beta * terms["align"]

    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        for k, v in self._sums.items():
            record[f"push_{k}"] = v / max(1, self._batches)
        if state.epoch == state.config.epochs - 1:
            self.close()

    def close(self) -> None:
        """Remove the hook from the model (done automatically after the last epoch)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``per_class`` samples from each of ``batch_size // per_class`` classes.

    Each batch takes a random subset of the classes when they do not all fit (thesis L784, ImageNet).
    Samples are drawn from a per-class permutation that is walked through and renewed when used up,
    so every sample is seen about once per epoch. An epoch has ``ceil(n / batch_size)`` batches, like
    the ordinary loader, which keeps learning-rate schedules unchanged.
    """

    def __init__(self, targets: torch.Tensor, batch_size: int, per_class: int = 8, seed: int = 0, epoch: int = 0):
        targets = torch.as_tensor(targets).long()
        self.classes = torch.unique(targets)
        if len(self.classes) < 2:
            raise ValueError("class-balanced batches need at least two classes")
        if batch_size < 2 * per_class:
            raise ValueError(f"batch_size {batch_size} must hold at least two classes of per_class={per_class} "
                             f"samples: use batch_size >= {2 * per_class}")
        self.by_class = [(targets == c).nonzero().flatten() for c in self.classes]
        self.per_class = per_class
        self.classes_per_batch = min(len(self.classes), batch_size // per_class)
        self.num_batches = math.ceil(len(targets) / batch_size)
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        pools = [idx[torch.randperm(len(idx), generator=gen)] for idx in self.by_class]
        cursor = [0] * len(pools)
        for _ in range(self.num_batches):
            chosen = torch.randperm(len(pools), generator=gen)[: self.classes_per_batch].tolist()
            batch = []
            for c in chosen:
                for _ in range(self.per_class):
                    if cursor[c] == len(pools[c]):
                        pools[c] = pools[c][torch.randperm(len(pools[c]), generator=gen)]
                        cursor[c] = 0
                    batch.append(int(pools[c][cursor[c]]))
                    cursor[c] += 1
            yield batch
