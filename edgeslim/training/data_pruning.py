"""Dynamic data pruning (Raju thesis, ch. 4, Algorithm 1; specs/seed-raju.md section B).

Every ``period`` epochs (T_p) the whole training set is scored with the current model and the
``k = (1 - prune) * N`` samples to train on until the next checkpoint are selected; an epoch is one
pass over that subset, so each epoch is cheaper by the pruning rate. The first checkpoint is epoch 0.

Criteria (``method``):

* ``random`` -- k samples uniformly at random, redrawn at every checkpoint. The mandatory baseline
  (strong: thesis L882); it needs no scoring pass at all.
* ``loss`` -- top-k by the current per-sample cross-entropy (the thesis's "uncertainty", Eq. 4.1).
* ``ema`` -- top-k by the exponential moving average of the loss, Eq. 4.2 (alpha weights the new loss).
* ``egreedy`` -- (1 - epsilon) k by EMA, then epsilon k uniformly from the rest (L816-824).
* ``ucb`` -- top-k by EMA + c * var, Eqs. 4.3-4.4: var is updated with the *previous* EMA before the
  EMA is updated; variance, not standard deviation, and no count term (the thesis's variant).
* ``margin``, ``entropy`` -- background criteria of thesis ch. 2 (not evaluated there): the lowest
  top-2 softmax margin / the highest predictive entropy.
* ``forgetting`` -- forgetting events (correct -> wrong) seen between successive checkpoints; samples
  never classified correctly yet rank first (Toneva et al.). The thesis uses forgetting only as a
  static baseline; here it is observed at the checkpoints, at no extra cost.

Defaults not given by the thesis: epsilon = 0.1, c = 1 (both swept there; "any c > 0 helps", L1027).
Scoring runs in eval mode on the un-augmented samples; ties are broken at random (seeded).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import targets_of
from .loop import Callback, TrainState
from .per_sample import EpochSubset, Resumable, per_sample_pass, plain_view, same_on_all_ranks, with_indices

__all__ = ["DynamicDataPruning", "METHODS", "parse_data_pruning", "categorize"]

METHODS = ("random", "loss", "ema", "egreedy", "ucb", "margin", "entropy", "forgetting")


class DynamicDataPruning(Resumable, Callback):
    """Train each period on the k samples a criterion selects from the whole data set.

    ``prune`` is the pruning rate p (the fraction of samples left out of each epoch), as in the thesis.
    ``by_class`` (not in the thesis) selects the same fraction of every class, each by the criterion:
    loss-based criteria on a young model otherwise pick whole classes the model does not predict yet,
    and training on them alone can swing the model from class to class (seen on digits).
    ``score_set`` is the training set without augmentation, index-aligned with the training set
    (default: ``plain_view`` of it). Attributes after training: ``checkpoints`` (one record per
    selection), ``times_selected`` (per sample), ``scored_samples`` and ``scoring_s`` (cost).
    """

    resumable = ("ema", "var", "correct", "forgets", "ever_correct", "times_selected", "selected", "checkpoints",
                 "scored_samples", "scoring_s")

    def __init__(self, method: str = "ucb", prune: float = 0.5, period: int = 10, alpha: float = 0.8,
                 epsilon: float = 0.1, c: float = 1.0, seed: int = 0, score_set: Dataset | None = None,
                 batch_size: int = 256, device: str | torch.device | None = None, by_class: bool = False):
        if method not in METHODS:
            raise ValueError(f"unknown data-pruning method {method!r}: one of {', '.join(METHODS)}")
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"pruning rate must be in [0, 1) (the fraction of samples left out), got {prune}")
        if period < 1:
            raise ValueError(f"pruning period must be at least 1 epoch, got {period}")
        if not 0.0 < alpha <= 1.0 or not 0.0 <= epsilon <= 1.0 or c < 0:
            raise ValueError("need 0 < alpha <= 1, 0 <= epsilon <= 1 and c >= 0")
        self.method, self.prune, self.period = method, prune, period
        self.alpha, self.epsilon, self.c, self.seed = alpha, epsilon, c, seed
        self.score_set, self.batch_size, self.device = score_set, batch_size, device
        self.by_class = by_class
        self.full: Dataset | None = None
        self.ema: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.correct: torch.Tensor | None = None     # at the last checkpoint (forgetting)
        self.forgets: torch.Tensor | None = None
        self.ever_correct: torch.Tensor | None = None
        self.times_selected: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None     # the samples of the current period
        self.checkpoints: list[dict[str, Any]] = []
        self.scored_samples = 0
        self.scoring_s = 0.0

    # -- the callback -------------------------------------------------------------------------
    def attach(self, train_set: Dataset) -> None:
        """Take ``train_set`` as the whole data set to select from (fit does this at the first epoch)."""
        self.full = with_indices(train_set)  # subsets then still yield indices into the whole set (for PatchDrop)
        self.score_set = self.score_set if self.score_set is not None else plain_view(train_set)
        if len(self.score_set) != len(train_set):
            raise ValueError(f"score_set has {len(self.score_set)} samples, the training set {len(train_set)}; "
                             "they must be the same samples in the same order")
        self.times_selected = torch.zeros(len(train_set), dtype=torch.long)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.full is None:
            self.attach(state.train_set)
        if state.epoch % self.period == 0:
            start = time.perf_counter()
            self.selected = self.select(state.model, checkpoint=len(self.checkpoints))
            elapsed = time.perf_counter() - start
            self.scoring_s += elapsed
            self.times_selected[self.selected] += 1
            self.checkpoints.append({"epoch": state.epoch, "kept": len(self.selected), "scoring_s": elapsed})
        if self.selected is not None:  # (set every epoch: a resumed run continues on the same subset)
            state.train_set = EpochSubset(self.full, self.selected.tolist())

    # -- selection ----------------------------------------------------------------------------
    def keep_count(self) -> int:
        n = len(self.full)
        return max(1, min(n, round((1.0 - self.prune) * n)))

    def select(self, model: torch.nn.Module, checkpoint: int) -> torch.Tensor:
        """Sorted indices of the samples to train on until the next checkpoint (same on every rank)."""
        n, k = len(self.full), self.keep_count()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + checkpoint)
        score = None if self.method == "random" else self.score(model)
        if not self.by_class:
            chosen = self._pick(score, n, k, gen)
        else:  # the same fraction of every class, each class selected by the criterion on its own
            labels = targets_of(self.score_set)
            classes = labels.unique()
            members = [(labels == c).nonzero().flatten() for c in classes]
            quota = _largest_remainder([len(m) * k / n for m in members], k)
            chosen = torch.cat([m[self._pick(None if score is None else score[m], len(m), q, gen)]
                                for m, q in zip(members, quota)])
        return same_on_all_ranks(chosen.sort().values)

    def _pick(self, score: torch.Tensor | None, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
        """k of n positions: at random, top-k by score, or epsilon-greedy."""
        if score is None:
            return torch.randperm(n, generator=gen)[:k]
        if self.method != "egreedy":
            return _top(score, k, gen)
        greedy = _top(score, k - round(self.epsilon * k), gen)
        rest = torch.ones(n, dtype=torch.bool)
        rest[greedy] = False
        pool = rest.nonzero().flatten()
        return torch.cat([greedy, pool[torch.randperm(len(pool), generator=gen)[: k - len(greedy)]]])

    def score(self, model: torch.nn.Module) -> torch.Tensor:
        """Update the running statistics with a pass over the whole data set; higher = keep."""
        stats = per_sample_pass(model, self.score_set, _loss_margin_entropy_correct, self.batch_size, self.device)
        self.scored_samples += len(stats)
        loss, margin, entropy, correct = stats.unbind(1)
        correct = correct.bool()
        if self.ema is None:  # first checkpoint: the mean starts at the first observation, the variance at 0
            self.ema, self.var = loss.clone(), torch.zeros_like(loss)
            self.forgets = torch.zeros_like(loss)
            self.ever_correct = correct.clone()
        else:
            self.var = (1 - self.alpha) * self.var + self.alpha * (loss - self.ema) ** 2  # Eq. 4.3, old EMA
            self.ema = self.alpha * loss + (1 - self.alpha) * self.ema                       # Eq. 4.2
            self.forgets += (self.correct & ~correct).float()
            self.ever_correct |= correct
        self.correct = correct
        if self.method == "loss":
            return loss
        if self.method in ("ema", "egreedy"):
            return self.ema
        if self.method == "ucb":
            return self.ema + self.c * self.var                                                # Eq. 4.4
        if self.method == "margin":
            return -margin
        if self.method == "entropy":
            return entropy
        # forgetting: never-learned samples first (as infinitely forgotten), then by forgetting events
        return self.forgets + (~self.ever_correct).float() * (len(self.checkpoints) + 1)


def _loss_margin_entropy_correct(model, x, y, _index) -> torch.Tensor:
    logits = model(x).float()
    loss = F.cross_entropy(logits, y, reduction="none")
    p = logits.softmax(1)
    top2 = p.topk(min(2, p.shape[1]), 1).values
    margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    correct = (logits.argmax(1) == y).float()
    return torch.stack([loss, margin, entropy, correct], 1)


def _top(score: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of the k highest scores; ties broken by a seeded random order."""
    perm = torch.randperm(len(score), generator=gen)
    order = torch.argsort(score[perm], descending=True, stable=True)
    return perm[order[:k]]


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integers summing to ``total``, each the floor of its share plus one for the largest remainders."""
    base = [math.floor(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - base[i], reverse=True)
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def parse_data_pruning(text: str, **kwargs: Any) -> DynamicDataPruning:
    """``METHOD:RATE`` as on the command line, e.g. ``ucb:0.5`` (train each epoch on half the data)."""
    method, sep, rate = text.partition(":")
    try:
        prune = float(rate) if sep else math.nan
    except ValueError:
        prune = math.nan
    if math.isnan(prune):
        raise ValueError(f"data pruning {text!r} must be METHOD:RATE, e.g. ucb:0.5 (methods: {', '.join(METHODS)}; "
                         "RATE = fraction of samples left out of each epoch)")
    return DynamicDataPruning(method, prune, **kwargs)


def categorize(times_selected: torch.Tensor, checkpoints: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Split samples into never / sometimes / always selected (thesis section 4.4, Fig. 4.4).

    The thesis fits a mixture of three truncated normals to the selection counts by MCMC; this fits a
    three-component Gaussian mixture by EM (scikit-learn), its components initialised at 0, the
    middle and ``checkpoints``, and assigns each sample to its most probable component. Returns
    boolean masks. The labels are qualitative, as in the thesis (L1085).
    """
    from sklearn.mixture import GaussianMixture

    counts = times_selected.double().numpy().reshape(-1, 1)
    # Counts are integers: a variance floor of 1/12 (that of rounding) keeps a component from collapsing
    # onto a single count value, which plain EM does on discrete data.
    gm = GaussianMixture(3, means_init=[[0.0], [checkpoints / 2], [float(checkpoints)]], random_state=seed,
                         reg_covar=1 / 12).fit(counts)
    component = torch.as_tensor(gm.predict(counts))
    rank = torch.as_tensor(gm.means_.flatten()).argsort().argsort()  # component -> 0 (lowest mean) .. 2
    level = rank[component]
    return {"never": level == 0, "sometimes": level == 1, "always": level == 2}
