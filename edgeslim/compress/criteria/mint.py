"""MINT: Mutual Information-based Neuron Trimming (Ganesh thesis ch. 3; specs/seed-ganesh.md §1).

Connectivity rho[child i, parent j] = conditional geometric MI I(child i; parent j | other parents),
estimated with the minimal-spanning-tree estimator (``mi_estimators.mst_cmi_layer``). Readings:

* ``"connection"`` -- the thesis: ``mint_connection_prune`` keeps the kernels scoring above one global
  threshold delta (absolute, or as a quantile over the unique scores of all layers, as the thesis's
  code does) and caps each layer at gamma of its weights; a layer over the cap gets a local threshold.
* ``"filter"`` -- connectivity becomes one score per channel for physical removal (see ``filter_scores``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import Criterion, register_criterion
from .connection import ConnectionResult, layer_masks
from .connectivity import connection_scores, criterion_scores
from .snacs import example_input

__all__ = ["MINT", "mint_connection_prune", "global_threshold"]


@register_criterion("mint")
class MINT(Criterion):
    """MINT connectivity (MST conditional GMI) turned into one score per channel for physical removal.

    As ``SNACS`` but with the minimal-spanning-tree estimator and no phi; options ``per_class``,
    ``groups``, ``reduce``, ``seed``, ``batch_size``, ``progress``, ``memory_mb``. Much slower than
    SNACS (see benchmarks/snacs_speed.py): groups (``groups=16``) keep large models tractable.
    """

    needs_data = True

    def score(self, model: nn.Module, graph, data=None, **options: Any) -> dict[str, torch.Tensor]:
        scores, self.details = criterion_scores(model, graph, data, "mst", options)
        return scores


def global_threshold(scores: Sequence[np.ndarray], delta: float | None = None,
                     delta_quantile: float | None = None) -> float:
    """delta as given, or the ``delta_quantile`` of the unique scores of all layers (the thesis's code)."""
    if (delta is None) == (delta_quantile is None):
        raise ValueError("give exactly one of delta (absolute threshold) or delta_quantile (in [0, 1])")
    if delta is not None:
        return float(delta)
    if not 0.0 <= delta_quantile <= 1.0:
        raise ValueError(f"delta_quantile must be in [0, 1], got {delta_quantile}")
    values = np.unique(np.concatenate([s[~np.isnan(s)].ravel() for s in scores]))
    return float(values[min(len(values) - 1, int(round(delta_quantile * len(values))))])


def mint_connection_prune(model: nn.Module, data, *, delta: float | None = None, delta_quantile: float | None = 0.5,
                          gamma: float | Mapping[str, float] = 0.75, pairing: str = "consecutive",
                          layers: Sequence[str] | None = None, groups: Any = None, per_class: int = 100,
                          estimator_options: Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 128,
                          device: str = "cpu", progress: bool = True) -> ConnectionResult:
    """MINT as in the thesis: prune kernels with rho <= delta, at most ``gamma`` of each layer's weights.

    ``delta`` is an absolute threshold; ``delta_quantile`` (used when delta is None) picks it from the
    unique scores of all layers. ``gamma``: one cap for all layers or {layer: cap} (default 0.75 as in
    the thesis's code; layers missing from a mapping are not pruned). The model is not modified.
    """
    from ..masks import mask_report

    modules = dict(model.named_modules())
    conn, acts, timing = connection_scores(model, data, estimator="mst", pairing=pairing, layers=layers,
                                           groups=groups, per_class=per_class, seed=seed, batch_size=batch_size,
                                           device=device, progress=progress, estimator_options=estimator_options)
    cutoff = global_threshold([c.scores for c in conn.values()], delta if delta is not None else None,
                              None if delta is not None else delta_quantile)
    caps = {n: float(gamma.get(n, 0.0)) if isinstance(gamma, Mapping) else float(gamma) for n in conn}
    masks = {f"{n}.weight": layer_masks(c, tuple(modules[n].weight.shape), fraction=caps[n], threshold=cutoff)
             for n, c in conn.items()}
    report = mask_report(model, masks, example_input(data))
    details = {"pairing": pairing, "delta": cutoff, "delta_quantile": delta_quantile if delta is None else None,
               "samples": len(acts)}
    return ConnectionResult("mint", masks, conn, caps, report, timing, details)
