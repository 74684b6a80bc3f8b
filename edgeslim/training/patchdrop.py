"""PatchDrop (Raju thesis, ch. 5; specs/seed-raju.md section C): train a ViT on the salient patches only.

Saliency comes from a frozen ViT's attention, computed once per training sample and cached: the
CLS token's attention to each patch in the last block, averaged over heads (the thesis uses DINO
ViT-B; here any ``VisionTransformer`` trained on the same data, e.g. a full-token baseline).
During training a fraction ``drop`` (lambda) of the patch tokens is removed after the positional
embedding, K = N - round(lambda N) kept for every image so batches stay dense:

* ``nonsalient`` -- drop the lowest-saliency patches (the thesis's method; keeps the foreground),
* ``salient`` -- drop the highest-saliency patches (ablation),
* ``random`` -- drop a fresh random set every iteration (baseline).

Evaluation uses full images (``model(x)``); PatchDrop is training-only. Saliency is computed on
the un-augmented images; the training augmentation shifts by less than a patch (spec C.3 point 6).
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import Dataset

from .loop import Callback, TrainState
from .per_sample import per_sample_pass, plain_view, with_indices

__all__ = ["PatchDrop", "attention_saliency", "MODES", "kept_tokens"]

MODES = ("nonsalient", "salient", "random")


def kept_tokens(num_patches: int, drop: float) -> int:
    """K = N - round(lambda N) patches kept (at least one)."""
    return max(1, num_patches - round(drop * num_patches))


def attention_saliency(teacher: nn.Module, dataset: Dataset, batch_size: int = 256,
                       device: str | torch.device | None = None) -> torch.Tensor:
    """(samples, patches) CLS-attention saliency of a frozen ViT (``teacher.cls_attention``), once per sample."""
    if not hasattr(teacher, "cls_attention"):
        raise ValueError(f"{type(teacher).__name__} has no cls_attention(); the saliency model must be a "
                         "VisionTransformer (e.g. zoo:vit_tiny trained on the same data)")
    return per_sample_pass(teacher, dataset, lambda m, x, _y, _i: m.cls_attention(x), batch_size, device)


class PatchDrop(Callback):
    """Drop ``drop`` of the patch tokens of every training image, chosen by ``mode`` from ``saliency``.

    ``saliency`` is (training samples, patches), index-aligned with the training set; it is not
    needed for ``random``. ``scored_samples``/``scoring_s`` are the saliency pass's cost when
    :meth:`from_teacher` computed it.
    """

    def __init__(self, drop: float = 0.5, mode: str = "nonsalient", saliency: torch.Tensor | None = None,
                 num_patches: int | None = None, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"unknown PatchDrop mode {mode!r}: one of {', '.join(MODES)}")
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"PatchDrop drop fraction must be in [0, 1), got {drop}")
        if saliency is None and mode != "random":
            raise ValueError(f"PatchDrop mode {mode!r} needs a saliency table (attention_saliency(teacher, data))")
        if saliency is None and num_patches is None:
            raise ValueError("random PatchDrop needs num_patches (the model's patch count)")
        self.drop, self.mode, self.seed = drop, mode, seed
        self.num_patches = saliency.shape[1] if saliency is not None else num_patches
        self.k = kept_tokens(self.num_patches, drop)
        self.keep_table = None
        self.never_kept = torch.empty(0, dtype=torch.long)
        if saliency is not None and mode != "random":
            # nonsalient keeps the K most salient patches, salient keeps the K least salient
            order = torch.argsort(saliency.float(), dim=1, descending=(mode == "nonsalient"), stable=True)
            self.keep_table = order[:, : self.k].sort(1).values
            # Positions dropped for EVERY image never train their positional embedding, yet full-image
            # evaluation feeds them: worth knowing before trusting full-image accuracy.
            seen = torch.zeros(self.num_patches, dtype=torch.bool)
            seen[self.keep_table.flatten()] = True
            self.never_kept = (~seen).nonzero().flatten()
        self.gen = torch.Generator().manual_seed(seed)
        self.scored_samples = 0
        self.scoring_s = 0.0

    @classmethod
    def from_teacher(cls, teacher: nn.Module, train_set: Dataset, drop: float = 0.5, mode: str = "nonsalient",
                     seed: int = 0, batch_size: int = 256, device: str | torch.device | None = None) -> "PatchDrop":
        """Compute the saliency once with the frozen ``teacher`` on the un-augmented ``train_set``."""
        start = time.perf_counter()
        saliency = attention_saliency(teacher, plain_view(train_set), batch_size, device) if mode != "random" else None
        pd = cls(drop, mode, saliency, getattr(teacher, "num_patches", None), seed)
        pd.scoring_s = time.perf_counter() - start
        pd.scored_samples = 0 if saliency is None else len(saliency)
        return pd

    def on_epoch_start(self, state: TrainState) -> None:
        state.train_set = with_indices(state.train_set)

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}  # the random mode's draws continue where they were

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])

    def keep_for(self, index: torch.Tensor) -> torch.Tensor:
        """(batch, K) patch positions to keep for the samples ``index`` (indices into the training set)."""
        if self.mode == "random":  # a fresh draw every iteration
            return torch.rand(len(index), self.num_patches, generator=self.gen).argsort(1)[:, : self.k].sort(1).values
        index = index.cpu()
        if len(index) and int(index.max()) >= len(self.keep_table):
            raise ValueError(f"saliency covers {len(self.keep_table)} samples but sample {int(index.max())} was "
                             "asked for: compute the saliency on the same training set")
        return self.keep_table[index]

    def forward(self, state: TrainState, x, y):
        if state.batch_indices is None:
            raise RuntimeError("PatchDrop needs sample indices: its training set was replaced by another callback")
        return state.train_model(x, keep=self.keep_for(state.batch_indices).to(x.device))  # DDP-wrapped when distributed
