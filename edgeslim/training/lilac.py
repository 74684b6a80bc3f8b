"""LILAC (Ganesh thesis, ch. 5; specs/seed-ganesh.md section 3): incremental labels, then adaptive compensation.

Phase 1, Incremental Label introduction (IL): labels are revealed in ascending order, ``initial`` (b)
at first and ``step`` (m) more every ``interval`` (E) epochs. Samples of revealed labels (S) keep their
label; all other samples (U) carry one pseudo-label rho (an existing output unit: no change to the
model or the loss) and serve as negatives. Each IL epoch uses every S sample once plus as many U
samples as there are S samples, drawn with a uniform prior over the hidden classes (reduced, or
augmented by repetition when U is smaller) -- the balancing of thesis Fig. 5.2.

Phase 2, Adaptive Compensation (AC): from epoch ``ac_start`` (T) on, a sample's one-hot target is
replaced by the smoother Eq. 5.1 target (epsilon on the true label, (1 - epsilon)/(L - 1) elsewhere)
if and only if the model misclassified it in the previous epoch. Those predictions are the ones the
training pass of the previous epoch already made (the "prior copy of the network" at no extra
forward cost); samples the previous epoch did not see count as correctly classified.

Choices where the thesis is silent (all parameters): rho = the last label to be revealed (L - 1 by
default); b = m; T = the first epoch with all labels known; the balancing holds per epoch (the
shuffled epoch is balanced, each batch in expectation) rather than per batch. The IL phase
adds ``il_epochs`` epochs in front of the run (the thesis keeps the number of epochs with all labels
known equal across methods): train for ``il_epochs + N`` epochs to compare with N plain epochs.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import targets_of
from .loop import Callback, TrainState
from .per_sample import LabelledView, Resumable, max_on_all_ranks, with_indices

__all__ = ["Lilac"]


class Lilac(Resumable, Callback):
    """The LILAC curriculum as a ``fit`` callback; ``incremental`` / ``compensation`` switch the phases (ablations)."""

    resumable = ("previous", "compensated", "schedule")

    def __init__(self, num_classes: int, step: int = 2, interval: int = 7, epsilon: float = 0.4,
                 initial: int | None = None, ac_start: int | None = None, pseudo_label: int | None = None,
                 order: Sequence[int] | None = None, incremental: bool = True, compensation: bool = True,
                 seed: int = 0):
        if num_classes < 2 or step < 1 or interval < 1 or not 0.0 < epsilon <= 1.0:
            raise ValueError("LILAC needs >= 2 classes, step >= 1 label, interval >= 1 epoch and 0 < epsilon <= 1")
        self.num_classes, self.step, self.interval, self.epsilon = num_classes, step, interval, epsilon
        self.order = torch.as_tensor(list(order) if order is not None else range(num_classes))
        if sorted(self.order.tolist()) != list(range(num_classes)):
            raise ValueError(f"order must be a permutation of the {num_classes} labels")
        self.initial = step if initial is None else initial
        if not 1 <= self.initial < num_classes:
            raise ValueError(f"initial labels must be between 1 and {num_classes - 1}, got {self.initial}")
        self.pseudo_label = int(self.order[-1]) if pseudo_label is None else pseudo_label
        self.incremental, self.compensation, self.seed = incremental, compensation, seed
        self.ac_start = self.il_epochs if ac_start is None else ac_start
        self.full: Dataset | None = None
        self.labels: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None  # prediction per sample in the previous epoch, -1 = not seen
        self.current: torch.Tensor | None = None
        self.compensated = 0                       # targets smoothed so far (a diagnostic)
        self.schedule: list[dict[str, Any]] = []

    @property
    def il_epochs(self) -> int:
        """Epochs of the IL phase: until the last label is revealed."""
        if not self.incremental:
            return 0
        return math.ceil((self.num_classes - self.initial) / self.step) * self.interval

    def revealed(self, epoch: int) -> torch.Tensor:
        """Labels whose ground truth is used at ``epoch``."""
        if epoch >= self.il_epochs:
            return self.order
        return self.order[: self.initial + self.step * (epoch // self.interval)]

    def on_epoch_start(self, state: TrainState) -> None:
        if self.full is None:
            if state.config.epochs <= self.il_epochs:
                raise ValueError(f"LILAC's label introduction takes {self.il_epochs} epochs; train for more "
                                 f"(il_epochs + the epochs of plain training), not {state.config.epochs}")
            self.full = state.train_set
            self.labels = targets_of(self.full)
            if self.previous is None:  # (not restored by load_state_dict)
                self.previous = torch.full((len(self.full),), -1, dtype=torch.long)
        self.current = torch.full((len(self.full),), -1, dtype=torch.long)
        if state.epoch < self.il_epochs:
            state.train_set = self.il_view(state.epoch)
        else:
            state.train_set = with_indices(self.full)
        self.schedule.append({"epoch": state.epoch, "revealed": len(self.revealed(state.epoch)),
                              "samples": len(state.train_set)})

    def il_view(self, epoch: int) -> LabelledView:
        """This epoch's training set: all S samples with their labels, |S| U samples with the pseudo-label."""
        known = torch.isin(self.labels, self.revealed(epoch))
        s_idx = known.nonzero().flatten()
        hidden = self.labels[~known].unique()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        shares = [len(s_idx) // len(hidden) + (j < len(s_idx) % len(hidden)) for j in range(len(hidden))]
        drawn = []
        for c, share in zip(hidden.tolist(), shares):
            pool = (self.labels == c).nonzero().flatten()
            if share <= len(pool):   # reduce
                drawn.append(pool[torch.randperm(len(pool), generator=gen)[:share]])
            else:                    # augment by repetition
                drawn.append(pool[torch.randint(len(pool), (share,), generator=gen)])
        u_idx = torch.cat(drawn)
        indices = torch.cat([s_idx, u_idx])
        labels = torch.cat([self.labels[s_idx], torch.full((len(u_idx),), self.pseudo_label, dtype=torch.long)])
        return LabelledView(self.full, indices, labels)

    def targets(self, state: TrainState, x, y, logits):
        index = state.batch_indices
        if index is None:
            raise RuntimeError("LILAC needs sample indices: its training set was replaced by another callback")
        index = index.cpu()
        self.current[index] = logits.detach().argmax(1).cpu()  # this epoch's predictions, for the next epoch
        if not self.compensation or state.epoch < max(self.ac_start, 1):
            return None
        wrong = (self.previous[index] >= 0) & (self.previous[index] != y.cpu())
        if not wrong.any():
            return None
        self.compensated += int(wrong.sum())
        return compensated_targets(y, logits.shape[1], self.epsilon, wrong.to(y.device))

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self.previous = max_on_all_ranks(self.current)  # DDP: each rank saw other samples
        record["lilac_revealed"] = len(self.revealed(state.epoch))


def compensated_targets(y: torch.Tensor, classes: int, epsilon: float, wrong: torch.Tensor) -> torch.Tensor:
    """Eq. 5.1: one-hot targets, with rows ``wrong`` smoothed to epsilon on y and (1 - epsilon)/(L - 1) elsewhere."""
    onehot = F.one_hot(y, classes).float()
    smooth = onehot * ((epsilon * classes - 1) / (classes - 1)) + (1 - epsilon) / (classes - 1)
    return torch.where(wrong[:, None], smooth, onehot)
