"""The thesis mode of MINT and SNACS: prune *connections* (whole kernels w[i, j]) with fixed masks.

Shared by ``mint.py`` and ``snacs.py`` (specs/seed-ganesh.md §1.2, §1.4, §2.2, §2.6, §2.7, §6):

* ``prune_order``/``layer_masks``: rank a layer's (child group, parent group) blocks by score and zero
  the lowest ones up to a fraction of the layer's weights, never touching protected child filters.
* ``svm_operating_curves`` + ``solve_limits``: SNACS's automatic per-layer upper pruning limits
  gamma^(l) -- per layer, an RBF-SVM trained on the un-pruned layer's activations is tested on the
  same samples with the layer pruned to c = 1..99 %; one shared accuracy threshold t sets every
  gamma^(l)(t) = the highest c whose accuracy still reaches t, and t is solved so that
  sum_l beta^(l) gamma^(l) = tau (Eq. 4.9), beta^(l) = the layer's share of conv/FC parameters.
* ``sensitivity``: Eq. 4.10-4.11, the importance of a layer's filters from the next layer's weights.

The pruned activations need no extra forward pass: the spatial mean of a convolution's output is
linear in the spatial means of its input patches, so masked outputs are ``patch_means @ (W * M)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .connectivity import Connectivity, expand_grouped

__all__ = [
    "connection_prune", "prune_order", "layer_masks", "sensitivity", "protected_filters", "svm_operating_curves",
    "solve_limits",
    "ConnectionResult", "LEVELS",
]

LEVELS = np.arange(1, 100) / 100.0  # the thesis's compression levels c = 1..99 %


def prune_order(conn: Connectivity, weight_shape: Sequence[int], protected: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Blocks in pruning order (lowest score first) with their cumulative weight counts, and the layer's total.

    Blocks of protected child filters and blocks without kernels (NaN) are left out; ties keep index order.
    """
    sizes = conn.block_sizes(weight_shape)
    total = int(np.prod(weight_shape))
    eligible = ~np.isnan(conn.scores)
    if protected is not None and len(protected):
        prot = set(int(i) for i in protected)
        for c, group in enumerate(conn.child_groups):
            if prot.intersection(group.tolist()):
                eligible[c, :] = False
    flat = np.flatnonzero(eligible.ravel())
    order = flat[np.argsort(conn.scores.ravel()[flat], kind="stable")]
    return order, np.cumsum(sizes.ravel()[order]), total


def _blocks_for_fraction(cum: np.ndarray, total: int, fraction: float) -> int:
    """How many blocks of the order to prune so that at most ``fraction`` of the layer's weights go."""
    return int(np.searchsorted(cum, fraction * total + 1e-9, side="right"))


def layer_masks(conn: Connectivity, weight_shape: Sequence[int], fraction: float | None = None,
                threshold: float | None = None, protected: np.ndarray | None = None) -> torch.Tensor:
    """The child weight's 0/1 mask: prune blocks scoring <= ``threshold`` (if given), at most ``fraction``
    of the layer's weights (if given; the lowest scores go first), never a protected filter's kernels."""
    order, cum, total = prune_order(conn, weight_shape, protected)
    k = len(order)
    if threshold is not None:
        k = int(np.searchsorted(conn.scores.ravel()[order], threshold, side="right"))
    if fraction is not None:
        k = min(k, _blocks_for_fraction(cum, total, fraction))
    pruned = np.zeros(conn.scores.size, dtype=bool)
    pruned[order[:k]] = True
    return conn.weight_mask(pruned.reshape(conn.scores.shape), weight_shape)


def _dense_weight(module: nn.Module) -> np.ndarray:
    """The weight as (out, in * prod(kernel)) with zeros between conv groups (a grouped conv made dense)."""
    w = module.weight.detach().double().cpu()
    w = w.reshape(w.shape[0], w.shape[1], -1).numpy()  # (out, in / groups, kernel)
    return expand_grouped(w, int(getattr(module, "groups", 1)), 0.0).reshape(w.shape[0], -1)


def sensitivity(next_weight: torch.Tensor | np.ndarray, conv_groups: int = 1) -> np.ndarray:
    """Eq. 4.10-4.11: lambda(i) = sum_fc W~(fc, i) / C(fc), C(fc) = sum_fp W~(fc, fp), per input filter i.

    W~ is the next layer's weight averaged over its kernel (H x W). The thesis does not say whether the
    weights are signed; absolute values are used, because signed sums can make C(fc) ~ 0 and blow up.
    """
    w = torch.as_tensor(next_weight).detach().double().abs()
    w = w.reshape(w.shape[0], w.shape[1], -1).mean(2).numpy()  # (N_{l+2}, N_{l+1} / groups)
    w = expand_grouped(w, conv_groups, 0.0)
    c = w.sum(1, keepdims=True)
    return (w / np.where(c > 0, c, 1.0)).sum(0)


def protected_filters(lam: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``fraction`` most sensitive filters (highest lambda)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"protected fraction must be in [0, 1], got {fraction}")
    k = int(round(fraction * len(lam)))
    return np.sort(np.argsort(-lam, kind="stable")[:k])


def _curve_job(name: str, features_in: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, y: np.ndarray,
               row_group: np.ndarray, col_group: np.ndarray, shape: tuple[int, int],
               variants: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]], svm_c: float
               ) -> tuple[str, list[np.ndarray], float]:
    """SVM accuracies of one layer pruned along each variant (order, cumulative sizes, total, levels).

    The SVM is fitted once on the un-pruned layer's (standardised) features and tested on the same
    samples with the layer pruned to every level. ``row_group``/``col_group`` give the child group of
    every weight row and the parent group of every weight column (input channel x kernel position).
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    start = time.perf_counter()
    base = features_in @ weight.T + (0.0 if bias is None else bias)
    scaler = StandardScaler().fit(base)
    svm = SVC(kernel="rbf", C=svm_c, gamma="scale").fit(scaler.transform(base), y)
    results = []
    for order, cum, total, levels in variants:
        accs = np.empty(len(levels))
        for li, level in enumerate(levels):
            pruned = np.zeros(shape[0] * shape[1], dtype=bool)
            pruned[order[:_blocks_for_fraction(cum, total, float(level))]] = True
            cut = pruned.reshape(shape)[row_group[:, None], col_group[None, :]]  # (out, in * kernel)
            accs[li] = np.mean(svm.predict(scaler.transform(base - features_in @ (weight * cut).T)) == y)
        results.append(accs)
    return name, results, time.perf_counter() - start


def _group_index(groups: list[np.ndarray], size: int, repeat: int = 1) -> np.ndarray:
    """Group number of every position 0..size-1 (each repeated ``repeat`` times, for kernel positions)."""
    index = np.zeros(size, dtype=np.int64)
    for k, g in enumerate(groups):
        index[g] = k
    return np.repeat(index, repeat)


def svm_operating_curves(model: nn.Module, conn: Mapping[str, Connectivity], features: Mapping[str, np.ndarray],
                         targets: np.ndarray, *, levels: np.ndarray = LEVELS,
                         protected: Mapping[str, Sequence[np.ndarray | None]] | None = None,
                         variant_levels: Mapping[str, Sequence[np.ndarray]] | None = None, svm_c: float = 1.0,
                         n_jobs: int = 2) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    """SVM accuracy alpha_c^(l) for every layer of ``conn`` at every level (thesis §4.2.4).

    ``features[layer]``: the layer's input as its linear map sees it -- patch means (N, C_in * kh * kw)
    for a convolution, the (token-averaged) input for a linear layer -- on the SVM samples, labelled
    ``targets``. ``protected[layer]``: a list of protected-filter sets (None = none), one curve each
    (default: one curve without protection); ``variant_levels[layer]`` the levels of each (default
    ``levels``). The per-layer SVMs run in parallel in ``n_jobs`` processes.
    Returns ({layer: [accuracies per variant]}, {layer: seconds}).
    """
    from joblib import Parallel, delayed

    modules = dict(model.named_modules())
    jobs = []
    for name, c in conn.items():
        module = modules[name]
        weight = _dense_weight(module)
        kernel = int(np.prod(module.weight.shape[2:])) if module.weight.dim() > 2 else 1
        if features[name].shape[1] != weight.shape[1]:
            raise ValueError(f"features of {name!r} have {features[name].shape[1]} columns, "
                             f"its weight {weight.shape[1]}")
        sets = list((protected or {}).get(name, [None]))
        lvls = list((variant_levels or {}).get(name, [levels] * len(sets)))
        variants = [(*prune_order(c, tuple(module.weight.shape), prot), np.asarray(lv, dtype=np.float64))
                    for prot, lv in zip(sets, lvls)]
        bias = module.bias.detach().double().cpu().numpy() if getattr(module, "bias", None) is not None else None
        rows = _group_index(c.child_groups, weight.shape[0])
        cols = _group_index(c.parent_groups, weight.shape[1] // kernel, kernel)
        jobs.append(delayed(_curve_job)(name, np.asarray(features[name], dtype=np.float64), weight, bias,
                                        np.asarray(targets), rows, cols, c.scores.shape, variants, svm_c))
    if n_jobs != 1 and len(jobs) > 1:
        results = Parallel(n_jobs=n_jobs)(jobs)
    else:
        results = [fn(*args, **kw) for fn, args, kw in jobs]
    return {n: a for n, a, _ in results}, {n: s for n, _, s in results}


def solve_limits(curves: Mapping[str, np.ndarray], betas: Mapping[str, float], tau: float,
                 levels: np.ndarray = LEVELS) -> tuple[dict[str, float], float, float]:
    """Eq. 4.9: the shared SVM-accuracy threshold t with sum_l beta_l gamma_l(t) = tau.

    gamma_l(t) = the highest level whose accuracy is >= t (0 when none): the threshold meets the
    curve "latest" (Fig. 4.3). Sweeping t from 1 down to 0, the sum grows in steps; at the step that
    crosses tau, the layers that rose in that step are moved only part of the way (the same fraction
    of their rise for each) so that the sum equals tau instead of overshooting it -- a flat curve
    (e.g. a layer whose SVM accuracy barely moves) would otherwise jump from 0 to the top level.
    Returns (gammas, t, achieved sum). Raises when tau is out of reach.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau (the target fraction of parameters pruned) must be in (0, 1), got {tau}")
    names = list(curves)
    acc = np.stack([np.asarray(curves[n], dtype=np.float64) for n in names])  # (L, levels)
    beta = np.array([betas[n] for n in names])
    levels = np.asarray(levels, dtype=np.float64)

    def gammas_at(t: float) -> np.ndarray:
        ok = acc >= t
        last = np.where(ok.any(1), acc.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
        return np.where(last >= 0, levels[np.maximum(last, 0)], 0.0)

    previous = np.zeros(len(names))
    for t in np.unique(acc)[::-1]:
        g = gammas_at(t)
        total = float(beta @ g)
        if total >= tau - 1e-12:
            below = float(beta @ previous)
            share = (tau - below) / (total - below) if total > below else 1.0
            g = previous + share * (g - previous)
            return dict(zip(names, g.tolist())), float(t), float(beta @ g)
        previous = g
    best = float(beta @ gammas_at(-np.inf))
    raise ValueError(f"tau = {tau:.3f} cannot be reached: the prunable layers hold {best:.3f} of the parameters "
                     f"at the largest level ({levels[-1]:.2f}); lower tau or prune more layers")


@dataclass
class ConnectionResult:
    """A connection-level (kernel mask) pruning: masks plus what produced them."""

    method: str
    masks: dict[str, torch.Tensor]
    connectivity: dict[str, Connectivity]
    gammas: dict[str, float]
    report: dict[str, Any]
    timing: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest (no tensors)."""
        return {"method": self.method, "gammas": self.gammas, "timing": self.timing,
                **{k: v for k, v in self.report.items() if k != "layers"}, "layers": self.report.get("layers", []),
                **{k: v for k, v in self.details.items() if isinstance(v, (int, float, str, dict, list))}}


def connection_prune(model: nn.Module, data, method: str = "snacs", **options: Any) -> ConnectionResult:
    """The thesis's granularity: kernel masks by ``method`` "snacs" (``snacs_connection_prune``) or
    "mint" (``mint_connection_prune``); ``options`` go to that function. The model is not modified:
    ``edgeslim.compress.masks.apply_masks(model, result.masks)`` applies the result."""
    if method == "snacs":
        from .snacs import snacs_connection_prune as fn
    elif method == "mint":
        from .mint import mint_connection_prune as fn
    else:
        raise ValueError(f"connection granularity exists for snacs and mint, not {method!r}")
    return fn(model, data, **options)
