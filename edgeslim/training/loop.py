"""The training / evaluation loop shared by ``train``, ``demo``, ``prune --finetune-epochs`` and ``finetune``.

Extensions (distillation, regularisers, data pruning, curricula ...) plug in as ``Callback``s
instead of new copies of the loop: a callback can add a loss term, replace the training set for
the next epoch, and observe each epoch's result.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import make_loader

__all__ = ["TrainConfig", "Callback", "TrainState", "fit", "evaluate", "seed_everything"]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"          # sgd | adamw | rmsprop
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"        # cosine | step | constant
    milestones: tuple[int, ...] = ()  # epochs, for schedule="step"
    gamma: float = 0.1              # step multiplier
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    epoch: int = 0
    step: int = 0
    train_set: Dataset | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_per_epoch: int = 1                 # of the full training set: the schedule's unit of one epoch
    batch_indices: torch.Tensor | None = None  # sample indices of the current batch, when the data set yields them


class Callback:
    """Hooks into ``fit``; every method is optional."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Runs before an epoch; may replace ``state.train_set`` (e.g. with a pruned subset)."""

    def forward(self, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Logits of this training batch computed differently (e.g. ViT patch dropping); ``None`` = ``model(x)``."""

    def targets(self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Soft targets (batch x classes) replacing the one-hot labels of this batch (e.g. smoothed labels)."""

    def extra_loss(self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the training loss of this batch (e.g. distillation, a regulariser)."""

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        """Sees the epoch's record (loss, accuracies); may add keys to it."""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: sgd, adamw or rmsprop")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step learning-rate multiplier: linear warm-up, then cosine / step / constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        if cfg.schedule == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {cfg.schedule!r}: cosine, step or constant")

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256, num_classes: int | None = None,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent), mean loss and per-class accuracy of ``model`` on ``data``."""
    loader = data if isinstance(data, DataLoader) else make_loader(data, batch_size)
    was_training = model.training
    model.eval()
    correct = correct5 = seen = 0
    loss_sum = 0.0
    per_class_hit: dict[int, int] = {}
    per_class_n: dict[int, int] = {}
    for x, y, *_ in loader:  # a data set may also yield sample indices
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        hit = pred == y
        correct += hit.sum().item()
        k = min(5, logits.shape[1])
        correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum().item()
        seen += len(y)
        for c, h in zip(y.tolist(), hit.tolist()):
            per_class_n[c] = per_class_n.get(c, 0) + 1
            per_class_hit[c] = per_class_hit.get(c, 0) + int(h)
    model.train(was_training)
    if seen == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {
        "accuracy": 100.0 * correct / seen,
        "top5": 100.0 * correct5 / seen,
        "loss": loss_sum / seen,
        "samples": seen,
        "per_class_accuracy": {str(c): 100.0 * per_class_hit[c] / per_class_n[c] for c in sorted(per_class_n)},
    }


def fit(model: nn.Module, train_set: Dataset, test_set: Dataset | None, config: TrainConfig,
        callbacks: list[Callback] = (), progress: bool = True, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``model`` in place; returns the per-epoch history and the best / last test accuracy."""
    seed_everything(config.seed)
    model.to(device)
    opt = make_optimizer(model, config)
    steps = math.ceil(len(train_set) / config.batch_size)
    state = TrainState(model, opt, make_scheduler(opt, config, steps), config, train_set=train_set,
                       steps_per_epoch=steps)
    start = time.perf_counter()
    bar = tqdm(total=config.epochs, desc="train", unit="epoch", disable=not progress, leave=False)
    for epoch in range(config.epochs):
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_start(state)
        record = train_one_epoch(state, callbacks, device)
        if test_set is not None:
            ev = evaluate(model, test_set, device=device)
            record.update(test_accuracy=ev["accuracy"], test_top5=ev["top5"], test_loss=ev["loss"])
        for cb in callbacks:
            cb.on_epoch_end(state, record)
        state.history.append(record)
        bar.set_postfix({k: round(v, 3) for k, v in record.items() if k in ("loss", "test_accuracy")})
        bar.update()
    bar.close()
    result: dict[str, Any] = {"epochs": config.epochs, "history": state.history,
                              "wall_s": time.perf_counter() - start, "config": config.to_dict()}
    if test_set is not None and state.history:
        accs = [r["test_accuracy"] for r in state.history]
        best = max(range(len(accs)), key=accs.__getitem__)
        result.update(accuracy=accs[-1], best_accuracy=accs[best], best_epoch=best + 1, last_epoch=len(accs))
    return result


def train_one_epoch(state: TrainState, callbacks: list[Callback], device) -> dict[str, Any]:
    cfg, model, opt = state.config, state.model, state.optimizer
    data = state.train_set
    if hasattr(data, "set_epoch"):
        data.set_epoch(state.epoch)
    loader = make_loader(data, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + state.epoch)
    model.train()
    loss_sum = correct = seen = 0.0
    for i, (x, y, *index) in enumerate(loader):  # a data set may also yield sample indices
        x, y = x.to(device), y.to(device)
        state.batch_indices = index[0] if index else None
        logits = _first_answer(callbacks, "forward", state, x, y)
        if logits is None:
            logits = model(x)
        soft = _first_answer(callbacks, "targets", state, x, y, logits)
        loss = F.cross_entropy(logits, y if soft is None else soft, label_smoothing=cfg.label_smoothing)
        for cb in callbacks:
            extra = cb.extra_loss(state, x, y, logits)
            if extra is not None:
                loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _advance_schedule(state, (i + 1) / len(loader))
        state.step += 1
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"epoch": state.epoch + 1, "loss": loss_sum / max(1, seen), "train_accuracy": 100.0 * correct / max(1, seen),
            "lr": opt.param_groups[0]["lr"], "samples": int(seen)}


def _first_answer(callbacks: list[Callback], hook: str, *args):
    """The one callback answer for ``hook`` (None when no callback answers); two answers are a conflict."""
    answers = [(type(cb).__name__, out) for cb in callbacks
               if hasattr(cb, hook) and (out := getattr(cb, hook)(*args)) is not None]
    if len(answers) > 1:
        raise RuntimeError(f"callbacks {', '.join(n for n, _ in answers)} all override {hook}(); combine them into one")
    return answers[0][1] if answers else None


def _advance_schedule(state: TrainState, epoch_fraction: float) -> None:
    """Step the per-step LR schedule by epoch progress, not by batch count.

    The schedule is laid out in steps of the full training set. A callback that trains an epoch on
    a subset (data pruning, CAPER) has fewer batches per epoch; keeping the schedule on epochs means
    its milestones and cosine end fall where the configuration says, in those shorter epochs.
    """
    target = state.epoch * state.steps_per_epoch + round(epoch_fraction * state.steps_per_epoch)
    while state.scheduler.last_epoch < target:
        state.scheduler.step()
