"""What a training run cost, in one convention shared by every training-efficiency method.

Convention (printed with every result): a trained sample costs one forward and one backward pass,
counted as **3 forward passes**; a scored sample (data-pruning rescoring, CAPER's clean and noisy
passes, PatchDrop's saliency pass) costs **1 forward pass**; one forward pass costs
``2 x forward MACs`` FLOPs (edgeslim.count). Wall-clock is the whole ``fit`` call, scoring included.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import nn

from ..metrics import count

__all__ = ["TrainingCost", "training_cost", "forward_macs", "CONVENTION"]

CONVENTION = ("training FLOPs = 2 x forward MACs x (3 x trained samples + 1 x scored samples); "
              "forward+backward counted as 3 forward passes, scoring passes as forward only; "
              "wall-clock includes scoring")


@dataclass
class TrainingCost:
    samples_trained: int     # forward + backward
    samples_scored: int      # forward only
    train_macs_per_sample: int
    score_macs_per_sample: int
    wall_s: float
    scoring_s: float

    @property
    def flops(self) -> int:
        return 2 * (3 * self.samples_trained * self.train_macs_per_sample
                    + self.samples_scored * self.score_macs_per_sample)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops, "convention": CONVENTION}


def forward_macs(model: nn.Module, example: torch.Tensor | tuple) -> int:
    """Forward MACs of ONE sample (``example`` has batch size 1)."""
    return count(model, example).macs


def training_cost(fit_result: dict[str, Any], callbacks: Iterable[Any], train_macs_per_sample: int,
                  score_macs_per_sample: int | None = None) -> TrainingCost:
    """Total cost of a ``fit`` run: samples from its history, scoring from the callbacks' ``scored_samples``."""
    callbacks = list(callbacks)
    return TrainingCost(
        samples_trained=sum(int(r["samples"]) for r in fit_result["history"]),
        samples_scored=sum(int(getattr(cb, "scored_samples", 0)) for cb in callbacks),
        train_macs_per_sample=int(train_macs_per_sample),
        score_macs_per_sample=int(train_macs_per_sample if score_macs_per_sample is None else score_macs_per_sample),
        wall_s=float(fit_result["wall_s"]),
        scoring_s=sum(float(getattr(cb, "scoring_s", 0.0)) for cb in callbacks),
    )
