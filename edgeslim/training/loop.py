"""The training / evaluation loop shared by ``train``, ``demo``, ``prune --finetune-epochs`` and ``finetune``.

One loop serves one process on a CPU or GPU and many processes under ``torchrun``
(DistributedDataParallel, a ``DistributedSampler`` per epoch, metrics summed over ranks).
Extensions (distillation, connection masks, data pruning, curricula ...) plug in as
``Callback``s instead of new copies of the loop. Runs resume exactly from a per-epoch
checkpoint (``checkpoint=`` / ``resume=``, see ``edgeslim.training.checkpoint``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..data import make_loader
from .distributed import DistContext, current_context

__all__ = ["TrainConfig", "Callback", "TrainState", "LRSchedule", "CrossEntropy", "fit", "evaluate",
           "seed_everything", "make_optimizer"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64            # global batch: each of N processes takes batch_size / N
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
    nesterov: bool = False          # SGD only
    precision: str = "auto"         # auto (bf16, else fp16, on CUDA; fp32 on CPU) | fp32 | bf16 | fp16
    num_workers: int = 0            # data-loading processes per training process

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(int(m) for m in d["milestones"])
        return cls(**d)

    def validate(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw", "rmsprop"):
            problems.append(f"optimizer {self.optimizer!r}: use sgd, adamw or rmsprop")
        if self.schedule not in ("cosine", "step", "constant"):
            problems.append(f"schedule {self.schedule!r}: use cosine, step or constant")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be positive (or None), got {self.grad_clip}")
        if problems:
            raise ValueError("; ".join(problems))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CrossEntropy:
    """The default training loss. Targets are class indices (N,) or per-class probabilities (N, C)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


class LRSchedule:
    """The learning rate as a function of training progress measured in (fractional) epochs.

    Defining the schedule on epochs rather than on optimiser steps keeps it right when a callback
    shortens an epoch (data pruning trains on a subset): milestones stay at the same epochs. The
    schedule is stateless; resuming only needs the epoch, which the checkpoint stores.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.optimizer, self.config = optimizer, config
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(self, progress: float, step_len: float) -> float:
        """Multiplier for the step that starts at ``progress`` epochs and lasts ``step_len`` epochs."""
        cfg = self.config
        if progress < cfg.warmup_epochs:
            return min(1.0, (progress + step_len) / cfg.warmup_epochs)  # first step already > 0
        if cfg.schedule == "cosine":
            t = (progress - cfg.warmup_epochs) / max(1e-12, cfg.epochs - cfg.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.schedule == "step":
            return cfg.gamma ** sum(math.floor(progress + 1e-9) >= m for m in cfg.milestones)
        return 1.0

    def set(self, progress: float, step_len: float) -> None:
        f = self.factor(progress, step_len)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f


@dataclass
class TrainState:
    model: nn.Module                  # the bare model: what callbacks read, score, mask and save
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    config: TrainConfig
    epoch: int = 0                    # index of the running epoch; number of finished epochs between epochs
    step: int = 0                     # optimiser steps taken
    train_set: Dataset | None = None  # a callback may replace it in on_epoch_start
    history: list[dict[str, Any]] = field(default_factory=list)
    dist: DistContext = field(default_factory=DistContext)
    device: torch.device = torch.device("cpu")
    train_model: nn.Module | None = None  # what the training step calls: the DDP wrapper under torchrun
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default_factory=CrossEntropy)
    scaler: Any = None                # torch.amp.GradScaler (active only for fp16)
    amp_dtype: torch.dtype | None = None
    samples_seen: int = 0             # training samples processed, all ranks together
    wall_s: float = 0.0               # training wall time, summed over resumed sessions
    last_eval: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    batch_indices: torch.Tensor | None = None  # sample indices of the current batch, when the data set yields them


class Callback:
    """Hooks into ``fit``; every method is optional.

    Under ``torchrun`` every rank runs every hook. A callback that changes what is trained on must
    make the same decision on every rank: derive it from seeded randomness, or decide on rank 0
    and share it with ``state.dist.broadcast_object``. ``state.model`` is the bare model; only the
    training forward goes through the DDP wrapper (``state.train_model``).
    """

    def on_train_start(self, state: TrainState) -> None:
        """Runs once before the first (or first resumed) epoch; may replace ``state.criterion``."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Runs before an epoch; may replace ``state.train_set`` (e.g. with a pruned subset)."""

    def forward(self, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Logits of this training batch computed differently (e.g. ViT patch dropping through
        ``state.train_model``); ``None`` = the plain forward. At most one callback may answer."""

    def targets(self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Soft targets (batch x classes) replacing the labels of this batch in ``state.criterion``
        (e.g. label smoothing from some epoch on, LILAC's compensation); ``None`` = the labels."""

    def extra_loss(self, state: TrainState, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the training loss of this batch (e.g. distillation, a regulariser)."""

    def on_step_end(self, state: TrainState) -> None:
        """Runs after every optimiser step (e.g. re-apply connection masks)."""

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        """Sees the epoch's record (loss, accuracies); may add keys to it."""

    def on_train_end(self, state: TrainState, result: dict[str, Any]) -> None:
        """Sees the run's result; may add keys to it."""

    def state_dict(self) -> dict[str, Any]:
        """What the callback needs to resume exactly (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def batch_sampler(self, state: TrainState):
        """A batch sampler for this epoch's training batches (e.g. class-balanced), or None."""
        return None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: sgd, adamw or rmsprop")


def autocast_dtype(precision: str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32), and a note when it was refused."""
    if precision == "fp32":
        return None, None
    if device.type != "cuda":
        note = None if precision == "auto" else \
            f"precision {precision} is used on CUDA only; this run on {device.type} trains in fp32"
        return None, note
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16, None
    return torch.bfloat16, None


def _set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell every layer of a (wrapped) data set the epoch, so augmentations are drawn afresh each epoch."""
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        dataset = getattr(dataset, "dataset", None)


def _per_rank_batch(cfg: TrainConfig, dist: DistContext) -> int:
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch size {cfg.batch_size} is the global batch and must divide evenly over "
                         f"{dist.world_size} processes; use a multiple of {dist.world_size}")
    return cfg.batch_size // dist.world_size


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256, num_classes: int | None = None,
             device: str | torch.device | None = None, dist: DistContext | None = None,
             num_workers: int = 0) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent), mean loss and per-class accuracy of ``model`` on ``data``.

    With a distributed ``dist`` each rank scores every world_size-th sample (no padding, so nothing
    is counted twice) and the counts are summed over ranks; every rank gets the same result.
    """
    dist = dist or DistContext()
    if device is None:  # where the model is
        device = next(model.parameters(), torch.empty(0)).device
    if isinstance(data, DataLoader):
        if dist.is_distributed:
            raise ValueError("distributed evaluation needs a Dataset, not a DataLoader (it shards the samples itself)")
        loader = data
    else:
        shard = Subset(data, range(dist.rank, len(data), dist.world_size)) if dist.is_distributed else data
        loader = make_loader(shard, batch_size, num_workers=num_workers)
    was_training = model.training
    model.eval()
    correct = correct5 = seen = 0
    loss_sum = 0.0
    hits = counts = None
    for x, y, *_ in loader:  # a data set may also yield sample indices
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        hit = logits.argmax(1) == y
        correct += hit.sum().item()
        k = min(5, logits.shape[1])
        correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum().item()
        seen += len(y)
        c = num_classes or logits.shape[1]
        batch_counts = torch.bincount(y, minlength=c).cpu()
        batch_hits = torch.bincount(y[hit], minlength=c).cpu()
        counts = batch_counts if counts is None else counts + batch_counts
        hits = batch_hits if hits is None else hits + batch_hits
    model.train(was_training)
    local = {"correct": correct, "correct5": correct5, "seen": seen, "loss": loss_sum,
             "hits": [] if hits is None else hits.tolist(), "counts": [] if counts is None else counts.tolist()}
    parts = dist.all_gather_object(local)
    total = {k: sum(p[k] for p in parts) for k in ("correct", "correct5", "seen", "loss")}
    width = max(len(p["counts"]) for p in parts)
    class_n = [sum(p["counts"][c] for p in parts if c < len(p["counts"])) for c in range(width)]
    class_hit = [sum(p["hits"][c] for p in parts if c < len(p["hits"])) for c in range(width)]
    if total["seen"] == 0:
        raise ValueError("cannot evaluate on an empty data set")
    n = total["seen"]
    return {
        "accuracy": 100.0 * total["correct"] / n,
        "top5": 100.0 * total["correct5"] / n,
        "loss": total["loss"] / n,
        "samples": n,
        "per_class_accuracy": {str(c): 100.0 * class_hit[c] / class_n[c] for c in range(width) if class_n[c]},
    }


def fit(model: nn.Module, train_set: Dataset, test_set: Dataset | None, config: TrainConfig,
        callbacks: list[Callback] = (), progress: bool = True, device: str | torch.device | None = None, *,
        checkpoint=None, resume=None, dist: DistContext | None = None) -> dict[str, Any]:
    """Train ``model`` in place; returns the per-epoch history and the best / last test accuracy.

    ``device``: default: ``dist.device`` when a context is given or a process group is initialised
    (one GPU per process under torchrun), else the CPU.
    ``dist``: the process group context (default: the one already initialised, else one process).
    ``checkpoint``: an ``EpochCheckpoint`` written after every epoch (rank 0 writes).
    ``resume``: a checkpoint written that way (path or loaded payload): weights, optimiser, RNG,
    epoch and history are restored and training continues exactly where it stopped.
    """
    from .checkpoint import load_resume_payload, restore_training_state

    config.validate()
    explicit = dist is not None
    dist = dist or current_context()
    if device is None:  # a given context or a process group decides; a plain call stays on the CPU
        device = dist.device if explicit or dist.is_distributed else "cpu"
    device = torch.device(device)
    callbacks = list(callbacks)
    payload = load_resume_payload(resume) if resume is not None else None
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
    seed_everything(config.seed + dist.rank)  # ranks draw different dropout / augmentation noise
    model.to(device)
    train_model = model
    if dist.is_distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, config)
    amp_dtype, note = autocast_dtype(config.precision, device)
    state = TrainState(model, opt, LRSchedule(opt, config), config, train_set=train_set, dist=dist, device=device,
                       train_model=train_model, criterion=CrossEntropy(config.label_smoothing),
                       scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                       amp_dtype=amp_dtype, notes=[note] if note else [])
    if payload is not None:
        restore_training_state(state, payload, callbacks)
    for cb in callbacks:
        cb.on_train_start(state)
    show = progress and dist.is_main
    bar = tqdm(total=config.epochs, initial=state.epoch, desc="train", unit="epoch", disable=not show, leave=False)
    while state.epoch < config.epochs:
        started = time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_start(state)
        record = train_one_epoch(state, callbacks, show)
        _sync_buffers(state)
        if test_set is not None:
            state.last_eval = evaluate(model, test_set, device=device, dist=dist, num_workers=config.num_workers)
            record.update(test_accuracy=state.last_eval["accuracy"], test_top5=state.last_eval["top5"],
                          test_loss=state.last_eval["loss"])
        for cb in callbacks:
            cb.on_epoch_end(state, record)
        state.wall_s += time.perf_counter() - started
        record["wall_s"] = state.wall_s
        state.history.append(record)
        state.epoch += 1
        if checkpoint is not None:
            checkpoint.save(state, callbacks)
        bar.set_postfix({k: round(v, 3) for k, v in record.items() if k in ("loss", "test_accuracy")})
        bar.update()
    bar.close()
    if test_set is not None and state.last_eval is None:  # resumed a finished run: evaluate once
        state.last_eval = evaluate(model, test_set, device=device, dist=dist, num_workers=config.num_workers)
    result = _summary(state)
    for cb in callbacks:
        cb.on_train_end(state, result)
    return result


def _summary(state: TrainState) -> dict[str, Any]:
    cfg = state.config
    result: dict[str, Any] = {
        "epochs": cfg.epochs, "history": state.history, "wall_s": state.wall_s, "config": cfg.to_dict(),
        "world_size": state.dist.world_size, "samples_seen": state.samples_seen, "steps": state.step,
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[state.amp_dtype],
        "notes": state.notes,
    }
    accs = [r["test_accuracy"] for r in state.history if "test_accuracy" in r]
    if state.last_eval is not None:
        result.update(accuracy=state.last_eval["accuracy"], top5=state.last_eval["top5"],
                      test_loss=state.last_eval["loss"], per_class_accuracy=state.last_eval["per_class_accuracy"],
                      best_accuracy=state.last_eval["accuracy"], best_epoch=len(state.history),
                      last_epoch=len(state.history))
    if accs:
        best = max(range(len(accs)), key=accs.__getitem__)  # first epoch reaching the best accuracy
        result.update(best_accuracy=accs[best], best_epoch=state.history[best]["epoch"])
    return result


def _sync_buffers(state: TrainState) -> None:
    """Give every rank rank 0's BatchNorm statistics, so that all ranks hold the same model.

    DDP keeps the parameters identical, but each rank updates running statistics from its own last
    batch; rank 0's are the ones DDP broadcasts before the next forward anyway.
    """
    if state.dist.is_distributed:
        state.dist.broadcast_tensors_(list(state.model.buffers()))


def train_one_epoch(state: TrainState, callbacks: list[Callback], progress: bool = False) -> dict[str, Any]:
    cfg, model, opt, dist, device = state.config, state.model, state.optimizer, state.dist, state.device
    data = state.train_set
    _set_epoch(data, state.epoch)
    batch_sampler = next((s for cb in callbacks if (s := cb.batch_sampler(state)) is not None), None)
    if batch_sampler is not None:  # a callback's own batches (e.g. class-balanced for the push loss)
        loader = DataLoader(data, batch_sampler=batch_sampler)
    else:
        sampler = DistributedSampler(data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False)
        sampler.set_epoch(state.epoch)
        loader = make_loader(data, _per_rank_batch(cfg, dist), sampler=sampler, num_workers=cfg.num_workers,
                             seed=cfg.seed * 1000 + state.epoch)
    n = len(loader)
    state.train_model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(total=n, desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress,
               leave=False)
    for i, (x, y, *index) in enumerate(loader):  # a data set may also yield sample indices
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        state.batch_indices = index[0] if index else None
        state.scheduler.set(state.epoch + i / n, 1 / n)
        with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
            logits = _one_answer(callbacks, "forward", state, x, y)
            if logits is None:
                logits = state.train_model(x)
            soft = _one_answer(callbacks, "targets", state, x, y, logits)
            loss = state.criterion(logits, y if soft is None else soft)
            for cb in callbacks:
                extra = cb.extra_loss(state, x, y, logits)
                if extra is not None:
                    loss = loss + extra
        opt.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if cfg.grad_clip:
            state.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        state.scaler.step(opt)
        state.scaler.update()
        state.step += 1
        for cb in callbacks:
            cb.on_step_end(state)
        labels = y if y.ndim == 1 else y.argmax(1)  # soft targets: count the most likely class
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(y)
        bar.update()
    bar.close()
    loss_total, correct_total, seen_total = dist.all_reduce_sum([loss_sum.item(), correct.item(), seen])
    state.samples_seen += int(seen_total)
    return {"epoch": state.epoch + 1, "loss": loss_total / max(1, seen_total),
            "train_accuracy": 100.0 * correct_total / max(1, seen_total),
            "lr": opt.param_groups[0]["lr"], "samples": int(seen_total)}


def _one_answer(callbacks: list[Callback], hook: str, *args):
    """The answer of the one callback that overrides ``hook`` this batch (None when none does)."""
    answers = [(type(cb).__name__, out) for cb in callbacks
               if hasattr(cb, hook) and (out := getattr(cb, hook)(*args)) is not None]
    if len(answers) > 1:
        raise RuntimeError(f"callbacks {', '.join(n for n, _ in answers)} all override {hook}(); combine them into one")
    return answers[0][1] if answers else None
