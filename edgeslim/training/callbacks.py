"""Callbacks that recovery fine-tuning uses: knowledge distillation and fixed connection masks."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.masks import apply_masks, check_masks
from .loop import Callback, TrainState

__all__ = ["Distillation", "KeepMasks", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T² · KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    The T² keeps the gradient scale of the soft term independent of the temperature.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class _Weighted:
    """``weight`` × another loss (the hard-label share of the distillation objective)."""

    def __init__(self, loss, weight: float):
        self.loss, self.weight = loss, weight

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(logits, target)


class Distillation(Callback):
    """Knowledge distillation from a (dense) teacher:

        loss = α · T² · KL(softmax(teacher/T) || softmax(student/T)) + (1 − α) · hard-label loss

    The hard-label loss is whatever the run uses (cross-entropy with label smoothing by default,
    or a curriculum's loss). The teacher sees the same augmented batch as the student, in eval
    mode and without gradients; it is copied, so the caller's model is never moved or changed.
    Defaults T = 4, α = 0.5: on digits, α = 0.5 recovered a pruned ResNet-20 better than the also common
    α = 0.9 (benchmarks/finetune_kd.py, README "Fine-tuning").
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.teacher = copy.deepcopy(teacher)
        self.temperature, self.alpha = temperature, alpha

    def on_train_start(self, state: TrainState) -> None:
        self.teacher.to(state.device).eval().requires_grad_(False)
        state.criterion = _Weighted(state.criterion, 1.0 - self.alpha)

    def extra_loss(self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        if teacher_logits.shape != logits.shape:
            raise ValueError(f"the teacher's outputs have shape {tuple(teacher_logits.shape)}, the student's "
                             f"{tuple(logits.shape)}: distillation needs a teacher with the same classes")
        return self.alpha * distillation_loss(logits, teacher_logits, self.temperature)

    def describe(self) -> dict[str, Any]:
        return {"enabled": True, "temperature": self.temperature, "alpha": self.alpha}


class KeepMasks(Callback):
    """Keep connection-masked weights (the SNACS/MINT thesis mode) at exactly zero while training.

    The masks are applied before training and again after every optimiser step: momentum and
    weight decay would otherwise move a removed weight off zero. Under DDP every rank holds the
    same parameters and the same masks, so the masked weights stay zero on all of them.
    """

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def on_train_start(self, state: TrainState) -> None:
        check_masks(state.model, self.masks)
        self.masks = {k: v.to(state.device) for k, v in self.masks.items()}
        apply_masks(state.model, self.masks)

    def on_step_end(self, state: TrainState) -> None:
        apply_masks(state.model, self.masks)
