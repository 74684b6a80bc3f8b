"""SNACS: Slimming Neural networks using Adaptive Connectivity Scores (Ganesh thesis ch. 4; specs/seed-ganesh.md §2).

Connectivity eta[child i, parent j] = ACMI(X = child i; Y = parent j | Z = the other parents), by
the hash-based estimator (``mi_estimators.acmi_layer``) scaled by phi (default exp(-w^2/2) on the
layer's min-max scaled kernel norms). Two readings (``granularity``):

* ``"connection"`` -- the thesis: ``snacs_connection_prune`` zeroes the lowest-eta kernels of each
  layer up to its upper pruning limit gamma^(l); the limits come from RBF-SVM operating curves with
  one shared threshold solved so that sum beta gamma = tau (Eq. 4.9); the most sensitive filters
  (Eq. 4.10-4.11) keep all their kernels. The result is a set of masks, kept fixed while fine-tuning.
* ``"filter"`` (the default of ``edgeslim.prune``) -- connectivity becomes one score per channel and
  the slimming engine removes channels physically under any target: see ``filter_scores``.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import Criterion, register_criterion
from .activations import collect_activations
from .connection import (LEVELS, ConnectionResult, layer_masks, protected_filters, sensitivity, solve_limits,
                         svm_operating_curves)
from .connectivity import connection_scores, criterion_scores

__all__ = ["SNACS", "snacs_connection_prune", "conv_fc_parameters", "example_input", "PROTECT_CANDIDATES"]


@register_criterion("snacs")
class SNACS(Criterion):
    """SNACS connectivity (hash ACMI scaled by phi) turned into one score per channel for physical removal.

    A channel's score is the max of eta[child i, channel j | the consumer's other inputs] over every
    child filter of every layer that reads it (``channel_scores`` explains why the max). Options:
    ``per_class`` (calibration samples per class, default 100), ``groups`` (G), ``phi`` ("exp_w2",
    "one", "w", "w2"), ``reduce`` ("max" or "mean"), ``seed``, ``batch_size``, ``progress`` and the
    estimator's ``eps``, ``z_occupancy``, ``c_h``, ``proj_dim``, ``n_hashes`` (hash draws averaged per
    score: 8 by default here, since ranking channels needs steadier estimates than the thesis's single
    draw; ``connectivity.FILTER_N_HASHES``). ``details`` keeps what
    the last call measured. The thesis's connection granularity: ``snacs_connection_prune``.
    """

    needs_data = True

    def score(self, model: nn.Module, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        scores, self.details = criterion_scores(model, graph, data, "acmi", options)
        return scores

PROTECT_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def conv_fc_parameters(model: nn.Module) -> dict[str, int]:
    """Weights + biases of every conv/linear layer (the thesis counts these only)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out[name] = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    return out


def _svm_features(model: nn.Module, data, layers: Sequence[str], per_class: int, seed: int, batch_size: int,
                  device: str, progress: bool):
    """The layers' inputs as their linear maps see them, on the SVM samples: patch means or linear inputs."""
    modules = dict(model.named_modules())
    requests = {n: {"input"} if isinstance(modules[n], nn.Linear) else {"patch_means"} for n in layers}
    acts = collect_activations(model, data, requests, per_class=per_class, seed=seed, batch_size=batch_size,
                               device=device, progress=progress)
    feats = {n: acts.arrays[(n, next(iter(requests[n])))] for n in layers}
    return feats, acts.targets


def _next_layers(order: Sequence[str], modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """For each layer, the first later layer reading as many channels as it produces (the thesis's l+2)."""
    def n_in(m):
        return m.in_features if isinstance(m, nn.Linear) else m.in_channels

    def n_out(m):
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels

    nxt = {}
    for i, name in enumerate(order):
        for later in order[i + 1:]:
            if n_in(modules[later]) == n_out(modules[name]):
                nxt[name] = later
                break
    return nxt


def snacs_connection_prune(model: nn.Module, data, *, tau: float = 0.5, pairing: str = "consecutive",
                           layers: Sequence[str] | None = None, groups: Any = None, per_class: int = 100,
                           svm_per_class: int = 50, phi: str = "exp_w2", protect: float | str | Mapping = "auto",
                           gammas: Mapping[str, float] | None = None, delta: float | None = None,
                           levels: np.ndarray = LEVELS, estimator_options: Mapping[str, Any] | None = None,
                           n_jobs: int = 2, seed: int = 0, batch_size: int = 128, device: str = "cpu",
                           progress: bool = True) -> ConnectionResult:
    """SNACS as in the thesis: kernel masks with automatic per-layer limits, sensitivity and one target tau.

    ``data``: un-augmented calibration data (Dataset of (x, y) or DataLoader); ``per_class`` samples
    of each class score the connections, ``svm_per_class`` train and test the SVMs.
    ``tau``: the fraction of conv/FC parameters to prune (Eq. 4.9). ``gammas``: per-layer limits given
    by hand instead (skips the SVMs). ``protect``: fraction of each layer's most sensitive filters that
    keep every kernel -- a float, a {layer: fraction} mapping, 0 for none, or "auto": per layer, the
    candidate fraction (``PROTECT_CANDIDATES``, those <= 1 - gamma so that the layer still reaches its
    limit: the comparison is at the same pruning level) whose SVM accuracy at the layer's limit beats no
    protection by the most (none if no candidate beats it); the limits are not re-solved afterwards.
    ``delta``: optional absolute eta threshold (kernels scoring above it are kept even under the
    limit; the thesis's large runs use none).
    The model is not modified. Returns a ``ConnectionResult`` with masks for ``apply_masks``.
    """
    from ..masks import mask_report

    modules = dict(model.named_modules())
    conn, acts, timing = connection_scores(model, data, estimator="acmi", pairing=pairing, layers=layers,
                                           groups=groups, per_class=per_class, seed=seed, batch_size=batch_size,
                                           device=device, progress=progress, estimator_options=estimator_options,
                                           phi=phi)
    children = list(conn)
    nxt = _next_layers(acts.order, modules)
    lam = {n: sensitivity(modules[nxt[n]].weight, int(getattr(modules[nxt[n]], "groups", 1)))
           for n in children if n in nxt}
    shapes = {n: tuple(modules[n].weight.shape) for n in children}
    details: dict[str, Any] = {"pairing": pairing, "tau": tau, "samples": len(acts)}

    if isinstance(protect, Mapping):
        fractions = {n: float(protect.get(n, 0.0)) for n in children}
    elif protect == "auto" or protect is None:
        fractions = {n: 0.0 for n in children}
    else:
        fractions = {n: float(protect) for n in children}
    prot = {n: protected_filters(lam[n], fractions[n]) if n in lam and fractions[n] > 0 else None for n in children}

    if gammas is None:
        t0 = time.perf_counter()
        feats, targets = _svm_features(model, data, children, svm_per_class, seed + 1, batch_size, device, progress)
        params = conv_fc_parameters(model)
        total = sum(params.values())
        betas = {n: params[n] / total for n in children}
        curves, _ = svm_operating_curves(model, conn, feats, targets, levels=levels,
                                         protected={n: [prot[n]] for n in children}, n_jobs=n_jobs)
        curves = {n: c[0] for n, c in curves.items()}
        gammas, threshold, achieved = solve_limits(curves, betas, tau, levels)
        details.update(svm_threshold=threshold, limits_sum=achieved, svm_samples=len(targets),
                       curves={n: c.tolist() for n, c in curves.items()})
        if protect == "auto":
            fractions, prot = _auto_protection(model, conn, feats, targets, gammas, lam, n_jobs)
        timing["limits_s"] = time.perf_counter() - t0
    else:
        unknown = sorted(set(gammas) - set(children))
        if unknown:
            raise ValueError(f"gammas given for layers that are not pruned: {unknown}")
        gammas = {n: float(gammas.get(n, 0.0)) for n in children}

    masks = {f"{n}.weight": layer_masks(conn[n], shapes[n], fraction=gammas[n], threshold=delta, protected=prot[n])
             for n in children}
    report = mask_report(model, masks, example_input(data))
    details["protected_fraction"] = fractions
    return ConnectionResult("snacs", masks, conn, gammas, report, timing, details)


def example_input(data) -> torch.Tensor:
    """One input (batch 1) from a Dataset of (x, y) or a DataLoader."""
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return next(iter(data))[0][:1]
    return data[0][0].unsqueeze(0)


def _auto_protection(model, conn, feats, targets, gammas, lam, n_jobs):
    """Per layer, the protected fraction whose SVM accuracy at the layer's limit beats no protection most."""
    variants, candidates = {}, {}
    for n, g in gammas.items():
        # compare at the same pruning level: only fractions that still let the layer reach its limit
        usable = [f for f in PROTECT_CANDIDATES if f <= 1.0 - g + 1e-9]
        if n not in lam or g <= 0 or not usable:
            continue
        candidates[n] = usable
        variants[n] = [None] + [protected_filters(lam[n], f) for f in usable]
    fractions = {n: 0.0 for n in gammas}
    prot: dict[str, np.ndarray | None] = {n: None for n in gammas}
    if not variants:
        return fractions, prot
    sub = {n: conn[n] for n in variants}
    accs, _ = svm_operating_curves(model, sub, feats, targets, protected=variants,
                                   variant_levels={n: [np.array([gammas[n]])] * len(v) for n, v in variants.items()},
                                   n_jobs=n_jobs)
    for n, results in accs.items():
        base = float(results[0][0])
        scores = [float(r[0]) for r in results[1:]]
        best = int(np.argmax(scores))
        if scores[best] > base:
            fractions[n] = candidates[n][best]
            prot[n] = variants[n][best + 1]
    return fractions, prot
