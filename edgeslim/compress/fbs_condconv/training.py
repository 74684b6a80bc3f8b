"""Training FBS-CondConv models: the Lasso on saliencies and the thesis recipe (specs/seed-raju.md A.2, A.4).

Loss = cross-entropy + weight decay (in the optimizer) + lambda * sum over gated layers of ||g_l||_1,
where g_l is the pre-wta saliency vector of one example, averaged over the batch (the thesis does not
say how the batch is reduced). FBS is on from the first step, trained jointly with CondConv; the
training loop is edgeslim's own ``fit`` with ``SaliencyLasso`` as a callback.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ...data import DataBundle
from ...training import Callback, TrainConfig, fit
from .layer import fbs_layers

__all__ = ["SaliencyLasso", "FBSRecipe", "THESIS_RECIPE", "DIGITS_RECIPE", "train_fbs"]


class SaliencyLasso(Callback):
    """Adds ``lam * sum_l mean_batch ||g_l||_1`` over the gated FBS blocks of ``model`` to the loss."""

    def __init__(self, model: nn.Module, lam: float = 1e-8):
        self.layers = [m for _, m in fbs_layers(model) if m.gated]
        self.lam = lam

    def extra_loss(self, state, x, y, logits) -> torch.Tensor | None:
        if not self.lam or not self.layers:
            return None
        return self.lam * sum(m.saliency.abs().sum(1).mean() for m in self.layers)


@dataclass(frozen=True)
class FBSRecipe:
    """A training configuration plus the Lasso weight and the augmentation to load the data with."""

    train: TrainConfig
    lasso: float = 1e-8
    augment: str = "standard"  # passed to edgeslim.data.load_data(..., augment=)
    note: str = ""

    def with_epochs(self, epochs: int) -> "FBSRecipe":
        return replace(self, train=replace(self.train, epochs=epochs))


# Thesis chapter 3 (L661, L683): 480 epochs, RMSProp lr 0.01, cosine annealing, batch 256, weight decay 1e-4,
# Lasso 1e-8, gradient clipping, random crop 4 + flip + whitening + cutout 18, He init, swish.
THESIS_RECIPE = FBSRecipe(
    TrainConfig(epochs=480, batch_size=256, lr=0.01, optimizer="rmsprop", momentum=0.0, weight_decay=1e-4,
                schedule="cosine", grad_clip=5.0),
    lasso=1e-8, augment="cutout",
    note="Raju (2022) section 3.4.1 on CIFAR-10. Not given by the thesis, chosen here: RMSProp momentum 0 "
         "(TensorFlow's default), gradient-clip norm 5.0; torch's RMSProp (alpha 0.99, eps 1e-8) stands in for "
         "TensorFlow's (decay 0.9, eps inside the square root).",
)

# Minutes on 2 CPU cores. RMSProp as in the thesis, with a learning rate that suits torch's RMSProp on this
# small set (lr 0.01 diverges here); small batches give the 1,437 training images enough steps.
DIGITS_RECIPE = FBSRecipe(
    TrainConfig(epochs=6, batch_size=32, lr=1e-3, optimizer="rmsprop", momentum=0.0, weight_decay=1e-4,
                schedule="cosine", grad_clip=5.0),
    lasso=1e-8, augment="standard",
    note="edgeslim's short recipe for the bundled digits set (random shifts only: no flips for digits).",
)


def train_fbs(model: nn.Module, data: DataBundle, recipe: FBSRecipe = DIGITS_RECIPE, progress: bool = True,
              device: str = "cpu") -> dict[str, Any]:
    """Train ``model`` in place with ``recipe`` (works for SCP/dense models too: the Lasso is then a no-op)."""
    return fit(model, data.train, data.test, recipe.train, callbacks=[SaliencyLasso(model, recipe.lasso)],
               progress=progress, device=device)
