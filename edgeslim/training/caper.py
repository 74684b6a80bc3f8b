"""CAPER (Ganesh thesis, ch. 6; specs/seed-ganesh.md section 4): remove the noise-unstable samples once.

Train on all data until epoch ``tau``. Then, for every training sample i, add Gaussian noise
delta_i ~ N(0, 0.5) to the *normalised* image, capture the features of the chosen layer(s) for the
clean and the noisy image, project each channel to its spatial mean (H, P = 1) and take the per-channel
distance |H f(x) - H f(x + delta)| (Eq. 6.6). Distances are min-max normalised per channel over all
samples (Eq. 6.7), averaged over the (sensitive) channels (Eq. 6.8) and combined over layers with a
window alpha (Eq. 6.9). The ``remove`` (gamma: a COUNT) most unstable samples are removed permanently
(Eq. 6.11) and training continues from ``tau`` with label-smoothed cross-entropy (Eqs. 6.3-6.4).

Choices where the thesis is silent (all parameters): features are captured in eval mode on
un-augmented images; 0.5 is the noise standard deviation; the default layer is the last
feature-map activation before global pooling ("last conv layer", alpha = 1_L); all its channels
are used unless ``sensitive_channels`` asks for the top-k by SNACS sensitivity (Eq. 4.10, from the
classifier's weights); label smoothing starts at ``tau``. Each sample's noise is drawn from its own
seeded generator, so the result does not depend on batching or on the number of ranks.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..compress.criteria.activations import modules_called
from ..data import targets_of
from .loop import Callback, TrainState
from .per_sample import EpochSubset, Resumable, per_sample_pass, plain_view, same_on_all_ranks, unwrap, with_indices

__all__ = ["Caper", "default_feature_layer", "classifier_sensitivity", "window_weights"]

_NOT_FEATURES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d, nn.Dropout, nn.Identity,
                 nn.Flatten)


def default_feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last leaf module (in execution order) whose output is a feature map (B, C, H, W).

    For the CIFAR ResNets this is the last block's ReLU, for VGG/M-CifarNet the last activation:
    the "last conv layer" features sigma(Wx + b) of the thesis.
    """
    def is_feature_map(_path: str, module: nn.Module, output) -> bool:
        return (not list(module.children()) and isinstance(output, torch.Tensor) and output.dim() == 4
                and not isinstance(module, _NOT_FEATURES))

    order = modules_called(model, example, is_feature_map)
    if not order:
        raise ValueError("the model produces no 4-D feature map; name the feature layer(s) with layers=[...]")
    return order[-1]


def classifier_sensitivity(model: nn.Module, channels: int) -> torch.Tensor:
    """SNACS sensitivity (Eq. 4.10-4.11) of the ``channels`` features that feed the last linear layer.

    lambda_i = sum_c |W[c, i]| / sum_p |W[c, p]| over the classifier's outputs c (absolute values: signed
    sums can vanish, see specs/seed-ganesh.md 2.7).
    """
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear or linear[-1].in_features != channels:
        raise ValueError(f"cannot compute sensitivity: the last linear layer does not read the {channels} captured "
                         "channels; pass sensitive_channels=None to use all channels")
    w = linear[-1].weight.detach().abs()
    return (w / w.sum(1, keepdim=True).clamp_min(1e-12)).sum(0)


def window_weights(window: str | Sequence[float], layers: int) -> torch.Tensor:
    """alpha over ``layers`` layers (in forward order): ``last`` (1_L, the default), ``first_half`` (1_{1:L/2}),
    ``second_half`` (1_{L/2:L}), ``gaussian`` (N(0,1) density over the layers placed on [-2, 2]) or explicit weights."""
    if not isinstance(window, str):
        weights = torch.as_tensor(list(window), dtype=torch.float64)
        if len(weights) != layers or (weights < 0).any():
            raise ValueError(f"window weights must be {layers} non-negative numbers, got {list(window)}")
        return weights
    half = math.ceil(layers / 2)
    if window == "last":
        w = torch.zeros(layers, dtype=torch.float64)
        w[-1] = 1
    elif window == "first_half":
        w = (torch.arange(layers) < half).double()
    elif window == "second_half":
        w = (torch.arange(layers) >= layers // 2).double()
    elif window == "gaussian":
        pos = torch.linspace(-2, 2, layers, dtype=torch.float64) if layers > 1 else torch.zeros(1, dtype=torch.float64)
        w = torch.exp(-pos ** 2 / 2) / math.sqrt(2 * math.pi)
    else:
        raise ValueError(f"unknown window {window!r}: last, first_half, second_half, gaussian or a list of weights")
    return w


class Caper(Resumable, Callback):
    """Remove the ``remove`` most noise-unstable samples at epoch ``tau``; label smoothing ``smoothing`` after.

    Attributes after epoch ``tau``: ``instability`` (xi per sample), ``removed`` (sorted indices),
    ``scored_samples`` (2 N: clean + noisy pass) and ``scoring_s``.
    """

    resumable = ("instability", "removed", "scored_samples", "scoring_s")

    def __init__(self, remove: int, tau: int = 50, smoothing: float = 0.1, noise_std: float = 0.5,
                 layers: Sequence[str] | None = None, window: str | Sequence[float] = "last",
                 sensitive_channels: int | None = None, prefilter_labels: int | None = None, seed: int = 0,
                 score_set: Dataset | None = None, batch_size: int = 256, device: str | torch.device | None = None,
                 selection: str = "instability"):
        if remove < 0 or tau < 0 or not 0.0 <= smoothing < 1.0 or noise_std < 0:
            raise ValueError("CAPER needs remove >= 0 samples, tau >= 0 epochs, 0 <= smoothing < 1, noise_std >= 0")
        if selection not in ("instability", "random"):
            raise ValueError(f"CAPER selection must be instability or random (the thesis's baseline), not {selection!r}")
        self.selection = selection
        self.remove, self.tau, self.smoothing, self.noise_std = int(remove), int(tau), smoothing, noise_std
        self.layers, self.window = list(layers) if layers else None, window
        self.sensitive_channels, self.prefilter_labels, self.seed = sensitive_channels, prefilter_labels, seed
        self.score_set, self.batch_size, self.device = score_set, batch_size, device
        self.full: Dataset | None = None
        self.instability: torch.Tensor | None = None
        self.removed: torch.Tensor | None = None
        self.scored_samples = 0
        self.scoring_s = 0.0

    def on_epoch_start(self, state: TrainState) -> None:
        if self.full is None:
            if self.tau >= state.config.epochs:
                raise ValueError(f"CAPER epoch tau={self.tau} is not before the last epoch ({state.config.epochs} "
                                 "epochs): lower tau or train longer")
            self.full = with_indices(state.train_set)  # the kept subset still yields indices into the whole set
            if self.remove >= len(self.full):
                raise ValueError(f"cannot remove {self.remove} of {len(self.full)} training samples")
            self.score_set = self.score_set if self.score_set is not None else plain_view(self.full)
        if state.epoch == self.tau:
            start = time.perf_counter()
            self.removed = self.select(state.model)
            self.scoring_s += time.perf_counter() - start
        if state.epoch >= self.tau and self.removed is not None:  # every epoch, so a resumed run stays pruned
            keep = torch.ones(len(self.full), dtype=torch.bool)
            keep[self.removed] = False
            state.train_set = EpochSubset(self.full, keep.nonzero().flatten().tolist())

    def targets(self, state: TrainState, x, y, logits):
        if state.epoch < self.tau or self.smoothing == 0:
            return None
        classes = logits.shape[1]
        return F.one_hot(y, classes).float() * (1 - self.smoothing) + self.smoothing / classes  # Eq. 6.4

    # -- the instability heuristic --------------------------------------------------------------
    def select(self, model: nn.Module) -> torch.Tensor:
        """Sorted indices of the ``remove`` most unstable samples (identical on every rank).

        ``selection="random"`` removes as many samples at random instead (the thesis's "Random" row).
        """
        if self.selection == "random":
            gen = torch.Generator().manual_seed(self.seed)
            return same_on_all_ranks(torch.randperm(len(self.score_set), generator=gen)[: self.remove].sort().values)
        candidates = None
        if self.prefilter_labels:
            # ILSVRC variant: rank the labels by mean instability, then re-score only their samples
            xi = self.instability_of(model)
            labels = targets_of(self.score_set)
            classes = labels.unique()
            means = torch.stack([xi[labels == c].mean() for c in classes])
            worst = classes[means.argsort(descending=True)[: self.prefilter_labels]]
            candidates = torch.isin(labels, worst).nonzero().flatten()
        xi = self.instability_of(model, candidates)
        self.instability = xi if candidates is None else torch.full((len(self.score_set),), float("nan")).index_put_(
            (candidates,), xi)
        order = xi.argsort(descending=True, stable=True)[: self.remove]
        chosen = order if candidates is None else candidates[order]
        return same_on_all_ranks(chosen.sort().values)

    def instability_of(self, model: nn.Module, indices: torch.Tensor | None = None) -> torch.Tensor:
        """xi (Eq. 6.9) for the samples ``indices`` (default all), normalised over those samples."""
        model = unwrap(model)
        example = self.score_set[0][0].unsqueeze(0).to(next(model.parameters()).device)
        layers = self.layers or [default_feature_layer(model, example)]
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"model has no module(s) {missing}; layers must name modules of the model")
        if self.sensitive_channels and len(layers) > 1:
            raise ValueError("sensitive_channels uses the classifier's weights, so it needs a single feature layer "
                             "(the one the classifier reads); drop it or capture one layer")
        captured: dict[str, torch.Tensor] = {}

        def capture(name):
            def hook(_mod, _inp, out):  # H: mean over the spatial (or token) positions -> one value per channel
                captured[name] = out.float().mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out.float()
            return hook

        def distances(model, x, _y, index):
            noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + int(i))) for i in index]).to(x.device) * self.noise_std
            model(x)
            clean = torch.cat([captured[n] for n in layers], 1)
            model(x + noise)
            noisy = torch.cat([captured[n] for n in layers], 1)
            return (clean - noisy).abs()                                                      # Eq. 6.6, P = 1

        handles = [modules[n].register_forward_hook(capture(n)) for n in layers]
        try:
            delta = per_sample_pass(model, self.score_set, distances, self.batch_size, self.device, indices)
        finally:
            for h in handles:
                h.remove()
        self.scored_samples += 2 * len(delta)
        lo, hi = delta.min(0).values, delta.max(0).values
        delta = (delta - lo) / (hi - lo).where(hi > lo, torch.ones_like(hi))                 # Eq. 6.7
        xi_layers, offset = [], 0
        for name in layers:
            width = captured[name].shape[1]
            part = delta[:, offset:offset + width]
            offset += width
            if self.sensitive_channels:
                top = classifier_sensitivity(model, width).argsort(descending=True)[: self.sensitive_channels]
                part = part[:, top.cpu()]
            xi_layers.append(part.mean(1))                                                    # Eq. 6.8
        alpha = window_weights(self.window, len(layers)).float()
        return torch.stack(xi_layers, 1) @ alpha                                              # Eq. 6.9

    def saved_forward_macs(self, total_epochs: int, macs_per_sample: int) -> int:
        """The thesis's "training FLOPs saved" (section 4.7): gamma x (E - tau) x forward MACs of one sample."""
        return self.remove * max(0, total_epochs - self.tau) * macs_per_sample

    def summary(self) -> dict[str, Any]:
        return {"remove": self.remove, "tau": self.tau, "smoothing": self.smoothing, "noise_std": self.noise_std,
                "removed": None if self.removed is None else self.removed.tolist(),
                "scored_samples": self.scored_samples, "scoring_s": self.scoring_s}
