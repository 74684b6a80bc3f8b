"""Connectivity between parent and child filters (MINT / SNACS; specs/seed-ganesh.md §0, §1.2, §2.2, §6.2-6.5).

A *layer pair* names a child layer (a convolution or linear layer whose kernels get pruned) and where
its parents' activations come from. Two pairings:

* ``"input"`` (default): the parents of a child filter are the channels it actually reads -- the
  spatial means of the child layer's own input. This follows the model's real data flow (residual
  additions, concatenations, any graph the engine traces), and both activations come from one hook.
* ``"consecutive"`` (the thesis's, for reproducing its numbers): layer k+1's parents are layer k's
  output filters in execution order, straight through residual connections (conv_k output, pre-BN).

Filters are split into G sequential equal groups per layer (thesis: consecutive filters); one
score per (child group, parent group) applies to every kernel between the two groups.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import Activations, prunable_layers
from .mi_estimators import acmi_layer, mst_cmi_layer, split_groups

__all__ = [
    "LayerPair", "Connectivity", "PHI_KINDS", "phi_from_weights", "input_pairs", "consecutive_pairs",
    "score_pairs", "connection_scores", "activation_requests", "resolve_groups",
]

PHI_KINDS = ("one", "w", "w2", "exp_w2")
ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {"acmi": acmi_layer, "mst": mst_cmi_layer}


@dataclass
class LayerPair:
    """Child layer ``child`` and the source of its parents' activations: (``parent``, ``parent_kind``)."""

    child: str
    parent: str
    parent_kind: str  # "input" (the child's own input) or "output" (the previous layer's output)

    @property
    def child_key(self) -> tuple[str, str]:
        return (self.child, "output")

    @property
    def parent_key(self) -> tuple[str, str]:
        return (self.parent, self.parent_kind)


@dataclass
class Connectivity:
    """Scores of one layer pair: ``scores[c, p]`` for child group c and parent group p (NaN = no such kernels)."""

    pair: LayerPair
    scores: np.ndarray
    child_groups: list[np.ndarray]
    parent_groups: list[np.ndarray]
    conv_groups: int = 1
    seconds: float = 0.0

    def block_sizes(self, weight_shape: Sequence[int]) -> np.ndarray:
        """Number of weights in every (child group, parent group) block; 0 where no kernel exists."""
        per_kernel = int(np.prod(weight_shape[2:])) if len(weight_shape) > 2 else 1
        sizes = np.outer([len(g) for g in self.child_groups], [len(g) for g in self.parent_groups]) * per_kernel
        return np.where(np.isnan(self.scores), 0, sizes)

    def weight_mask(self, pruned: np.ndarray, weight_shape: Sequence[int]) -> torch.Tensor:
        """0/1 mask of the child's weight with every kernel of the ``pruned`` (G_child, G_parent) blocks zeroed."""
        out_ch = weight_shape[0]
        in_per_group = weight_shape[1]
        dense = np.ones((out_ch, in_per_group * self.conv_groups), dtype=np.float32)
        for c, p in zip(*np.nonzero(pruned)):
            dense[np.ix_(self.child_groups[c], self.parent_groups[p])] = 0.0
        if self.conv_groups > 1:  # keep the kernels that exist: child i reads the inputs of its conv group
            dense = dense[np.arange(out_ch)[:, None], grouped_columns(out_ch, in_per_group, self.conv_groups)]
        mask = torch.from_numpy(dense)
        return mask.reshape(*mask.shape, *([1] * (len(weight_shape) - 2))).expand(*weight_shape).contiguous()


def grouped_columns(out_ch: int, in_per_group: int, conv_groups: int) -> np.ndarray:
    """(out_ch, in_per_group): for each output of a grouped convolution, the positions among all the
    layer's inputs of the inputs it reads (those of its conv group)."""
    group = np.arange(out_ch) // (out_ch // conv_groups)
    return group[:, None] * in_per_group + np.arange(in_per_group)[None, :]


def expand_grouped(a: np.ndarray, conv_groups: int, fill: float) -> np.ndarray:
    """An array over (output, input of its conv group, ...) laid out over all the layer's inputs:
    (out, in_per_group * conv_groups, ...), ``fill`` where an output reads nothing (other conv groups)."""
    if conv_groups == 1:
        return a
    out_ch, in_per = a.shape[:2]
    full = np.full((out_ch, in_per * conv_groups, *a.shape[2:]), fill, dtype=np.float64)
    full[np.arange(out_ch)[:, None], grouped_columns(out_ch, in_per, conv_groups)] = a
    return full


def _conv_groups(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1))


def _in_channels(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def input_pairs(model: nn.Module, layers: Sequence[str] | None = None, skip_first: bool = True,
                order: Sequence[str] | None = None) -> list[LayerPair]:
    """One pair per child layer: its parents are the channels of its own input.

    ``layers``: the child layers (default: every conv/linear layer except the first one called,
    whose parents are the input image -- the thesis never prunes layer 1's inputs).
    """
    order = list(order) if order is not None else prunable_layers(model)
    if layers is None:
        layers = order[1:] if skip_first else order
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules or not isinstance(modules[name], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            raise ValueError(f"{name!r} is not a convolution or linear layer of the model")
    return [LayerPair(name, name, "input") for name in layers]


def consecutive_pairs(model: nn.Module, order: Sequence[str], layers: Sequence[str] | None = None) -> list[LayerPair]:
    """The thesis's pairing: (layer k, layer k+1) in execution order ``order``; layer k+1 is the child.

    Runs straight through residual connections, as the thesis's code does; the parent activations are
    layer k's output (pre-BN). ``layers`` restricts the children (default: every layer but the first).
    """
    modules = dict(model.named_modules())
    pairs = []
    wanted = set(order[1:] if layers is None else layers)
    unknown = wanted - set(order)
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} are not conv/linear layers called by the model")
    if order and order[0] in wanted:
        raise ValueError(f"{order[0]!r} is the first layer: its parents are the input, it cannot be a child")
    for prev, name in zip(order, order[1:]):
        if name not in wanted:
            continue
        if _out_channels(modules[prev]) != _in_channels(modules[name]):
            raise ValueError(
                f"consecutive pairing needs {prev!r} ({_out_channels(modules[prev])} outputs) to feed {name!r} "
                f"({_in_channels(modules[name])} inputs); use pairing='input' for this model")
        pairs.append(LayerPair(name, prev, "output"))
    return pairs


def activation_requests(pairs: Sequence[LayerPair]) -> dict[str, set[str]]:
    """What ``collect_activations`` must record for these pairs."""
    requests: dict[str, set[str]] = {}
    for pair in pairs:
        requests.setdefault(pair.child, set()).add("output")
        requests.setdefault(pair.parent, set()).add(pair.parent_kind)
    return requests


def resolve_groups(groups: Any, name: str, n_parent: int, n_child: int) -> tuple[int | None, int | None]:
    """(G_parent, G_child) of one layer pair from ``groups``: None (one per filter), an int for both,
    a (G_parent, G_child) pair, or a mapping from child layer name to either (missing = one per filter)."""
    if isinstance(groups, Mapping):
        groups = groups.get(name)
    if groups is None:
        return None, None
    gp, gc = (groups, groups) if isinstance(groups, (int, np.integer)) else tuple(groups)
    return (None if gp is None else min(int(gp), n_parent)), (None if gc is None else min(int(gc), n_child))


def phi_from_weights(weight: torch.Tensor, child_groups: Sequence[np.ndarray], parent_groups: Sequence[np.ndarray],
                     kind: str = "exp_w2", conv_groups: int = 1) -> np.ndarray | None:
    """The scaling phi per (child group, parent group) from the child's weights (thesis §4.3.3, Table 4.4-4.6).

    s = RMS of the block's weights (the kernel norm for single filters, made comparable across block
    sizes), min-max scaled to [0, 1] within the layer; ``kind``: "one" (phi = 1), "w" (s), "w2" (s^2)
    or "exp_w2" (exp(-s^2 / 2), the thesis's default). Note exp(-s^2/2) lowers the score of strong
    kernels -- implemented as written, configurable.
    """
    if kind not in PHI_KINDS:
        raise ValueError(f"unknown phi {kind!r}; use one of {', '.join(PHI_KINDS)} or pass an array")
    if kind == "one":
        return None
    w = weight.detach().double().cpu()
    w = w.reshape(w.shape[0], w.shape[1], -1)
    # (out, in): each child's kernels at its conv group's input positions, NaN where it has none
    sq = expand_grouped((w ** 2).sum(2).numpy(), conv_groups, np.nan)
    per_kernel = w.shape[2]
    rms = np.array([[math.sqrt(np.nanmean(sq[np.ix_(c, p)]) / per_kernel) if not np.all(np.isnan(sq[np.ix_(c, p)]))
                     else np.nan for p in parent_groups] for c in child_groups])
    lo, hi = np.nanmin(rms), np.nanmax(rms)
    s = (rms - lo) / (hi - lo) if hi > lo else np.zeros_like(rms)
    return {"w": s, "w2": s ** 2, "exp_w2": np.exp(-(s ** 2) / 2.0)}[kind]


def score_pairs(model: nn.Module, acts: Activations, pairs: Sequence[LayerPair], *, estimator: str = "acmi",
                groups: Any = None, phi: str | Mapping[str, np.ndarray] = "exp_w2", seed: int = 0,
                progress: bool = True, estimator_options: Mapping[str, Any] | None = None
                ) -> dict[str, Connectivity]:
    """Connectivity of every pair: ``{child layer: Connectivity}``.

    ``estimator``: "acmi" (SNACS) or "mst" (MINT). ``phi`` (ACMI only): one of PHI_KINDS, or a mapping
    child layer -> (G_child, G_parent) array. ``estimator_options`` go to the estimator (eps, c_h ...).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use acmi or mst")
    fn = ESTIMATORS[estimator]
    modules = dict(model.named_modules())
    options = dict(estimator_options or {})
    out: dict[str, Connectivity] = {}
    bar = tqdm(pairs, desc=f"{estimator} connectivity", unit="layer", disable=not progress, leave=False)
    for index, pair in enumerate(bar):
        start = time.perf_counter()
        module = modules[pair.child]
        child, parent = acts.arrays[pair.child_key], acts.arrays[pair.parent_key]
        cgroups = _conv_groups(module)
        layer_seed = seed * 100_003 + index
        if cgroups == 1:
            gp, gc = resolve_groups(groups, pair.child, parent.shape[1], child.shape[1])
            cg, pg = split_groups(child.shape[1], gc), split_groups(parent.shape[1], gp)
            kwargs = dict(options)
            if estimator == "acmi":
                kwargs["phi"] = (phi[pair.child] if isinstance(phi, Mapping)
                                 else phi_from_weights(module.weight, cg, pg, phi))
            scores = fn(child, parent, cg, pg, seed=layer_seed, **kwargs)
        else:  # grouped convolution: each conv group is its own layer pair, one score per filter
            cg, pg = split_groups(child.shape[1], None), split_groups(parent.shape[1], None)
            scores = np.full((len(cg), len(pg)), np.nan)
            out_per, in_per = child.shape[1] // cgroups, parent.shape[1] // cgroups
            phi_all = (phi_from_weights(module.weight, cg, pg, phi, cgroups)
                       if estimator == "acmi" and not isinstance(phi, Mapping) else None)
            for k in range(cgroups):
                rows, cols = slice(k * out_per, (k + 1) * out_per), slice(k * in_per, (k + 1) * in_per)
                kwargs = dict(options)
                if estimator == "acmi":
                    kwargs["phi"] = phi[pair.child][rows, cols] if isinstance(phi, Mapping) else (
                        None if phi_all is None else phi_all[rows, cols])
                scores[rows, cols] = fn(child[:, rows], parent[:, cols], seed=layer_seed + 7919 * k, **kwargs)
        out[pair.child] = Connectivity(pair, scores, cg, pg, cgroups, time.perf_counter() - start)
    return out


PAIRINGS = ("input", "consecutive")


def collect_pairs(model: nn.Module, data, *, pairing: str = "input", layers: Sequence[str] | None = None,
                  per_class: int | None = 100, seed: int = 0, batch_size: int = 128, device: str = "cpu",
                  progress: bool = True) -> tuple[list[LayerPair], Activations]:
    """Collect the activations a pairing needs (one pass over the calibration data) and build its pairs.

    The layer order is the order in which the forward pass first calls each conv/linear layer.
    """
    from .activations import collect_activations

    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; use {' or '.join(PAIRINGS)}")
    names = prunable_layers(model)
    if layers is not None:
        missing = sorted(set(layers) - set(names))
        if missing:
            raise ValueError(f"{missing} are not convolution or linear layers of the model")
    kinds = {"output"} if pairing == "consecutive" else {"input", "output"}
    wanted = names if pairing == "consecutive" or layers is None else list(layers)
    acts = collect_activations(model, data, {n: kinds for n in wanted}, per_class=per_class, seed=seed,
                               batch_size=batch_size, device=device, progress=progress)
    if pairing == "consecutive":
        return consecutive_pairs(model, acts.order, layers), acts
    if layers is None:
        return input_pairs(model, acts.order[1:]), acts
    return input_pairs(model, [n for n in acts.order if n in set(layers)]), acts


def connection_scores(model: nn.Module, data, *, estimator: str, pairing: str, layers: Sequence[str] | None,
                      groups: Any, per_class: int | None, seed: int, batch_size: int, device: str, progress: bool,
                      estimator_options: Mapping[str, Any] | None, phi: str | Mapping[str, np.ndarray] = "exp_w2"
                      ) -> tuple[dict[str, Connectivity], Activations, dict[str, float]]:
    """``collect_pairs`` then ``score_pairs``, timed: (connectivity, activations, {activations_s, scoring_s})."""
    t0 = time.perf_counter()
    pairs, acts = collect_pairs(model, data, pairing=pairing, layers=layers, per_class=per_class, seed=seed,
                                batch_size=batch_size, device=device, progress=progress)
    timing = {"activations_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    conn = score_pairs(model, acts, pairs, estimator=estimator, groups=groups, phi=phi, seed=seed,
                       progress=progress, estimator_options=estimator_options)
    timing["scoring_s"] = time.perf_counter() - t0
    return conn, acts, timing


# --------------------------------------------------------------------------------------------------
# Filter granularity: connectivity -> one score per channel of every channel group of the engine
# --------------------------------------------------------------------------------------------------

REDUCTIONS = ("max", "mean")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Hash draws averaged per ACMI score when the scores rank channels. One draw (the thesis's estimator,
# as timed in its run-time table) is too noisy to rank filters by: on the digits ResNet-20 two seeds
# ranked each layer's channels with a mean Spearman correlation of 0.30, with eight draws 0.78
# (benchmarks/snacs_digits.py --stability), and the pruned models kept more accuracy. It costs about
# 4x the scoring time (ResNet-56, 1,000 samples: 25 s instead of 7 s on 2 cores).
FILTER_N_HASHES = 8


def _readers(model: nn.Module, graph) -> dict[str, list[tuple[Any, Any]]]:
    """Consumer layer -> the (group, slice) pairs it reads: conv (groups=1) and linear weights along dim 1."""
    modules = dict(model.named_modules())
    out: dict[str, list[tuple[Any, Any]]] = {}
    for group in graph.groups:
        for s in group.consumers:
            m = modules.get(s.module)
            if (isinstance(m, _WEIGHTED) and s.param == "weight" and s.dim == 1 and s.index is not None
                    and int(getattr(m, "groups", 1)) == 1):
                out.setdefault(s.module, []).append((group, s))
    return out


def channel_scores(model: nn.Module, graph, data, *, estimator: str = "acmi", per_class: int | None = 100,
                   groups: Any = None, phi: str = "exp_w2", reduce: str = "max", seed: int = 0,
                   batch_size: int = 128, device: str = "cpu", progress: bool = True,
                   estimator_options: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """One score per channel of every prunable group of ``graph`` (an ``edgeslim.trace`` result).

    Parents and children come from the channel graph: for every layer that reads a group's channels
    (a consumer: conv or linear), the parents are all the channels it reads -- its input, one unit per
    channel (a channel flattened into several linear inputs is their mean) -- and the children are its
    output filters. Connectivity eta[child i, parent j | other parents] is estimated per consumer.

    A channel's score is the ``reduce`` ("max", default, or "mean") of eta over every child of every
    consumer. Why max: a channel may be removed physically exactly when *all* its outgoing connections
    could be pruned, i.e. when even its strongest connection is weak; at any connection threshold delta,
    the channels whose max is below delta are precisely those a connection-level pruning would cut off
    entirely. "mean" reads "total information sent" instead (equal to the sum up to a per-group constant,
    which the engine's per-group normalisation removes).

    With the ACMI estimator each score averages ``n_hashes`` hash draws (default ``FILTER_N_HASHES``,
    8, not the thesis's single draw: see there).

    Returns ({group id: scores}, details). Groups that no conv/linear layer reads (e.g. read only by
    attention) get their producers' L1 norms instead and are listed in ``details["fallback_l1"]``.
    """
    from .activations import collect_activations

    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; use {' or '.join(REDUCTIONS)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use acmi or mst")
    modules = dict(model.named_modules())
    readers = _readers(model, graph)
    prunable = graph.prunable_groups
    wanted_ids = {g.id for g in prunable}
    consumers = [m for m in readers if any(g.id in wanted_ids for g, _ in readers[m])]
    acts = collect_activations(model, data, {m: {"input", "output"} for m in consumers}, per_class=per_class,
                               seed=seed, batch_size=batch_size, device=device, progress=progress)
    options = dict(estimator_options or {})
    if estimator == "acmi":
        options.setdefault("n_hashes", FILTER_N_HASHES)
    collected: dict[str, list[np.ndarray]] = {g.id: [] for g in prunable}
    timings = {}
    bar = tqdm(consumers, desc=f"{estimator} connectivity", unit="layer", disable=not progress, leave=False)
    for index, name in enumerate(bar):
        start = time.perf_counter()
        inputs, children = acts.input(name), acts.output(name)
        units: list[tuple[str | None, int, np.ndarray]] = []
        for group, s in readers[name]:
            positions = s.positions().cpu().numpy()
            units += [(group.id, c, positions[c]) for c in range(group.size)]
        covered = np.zeros(inputs.shape[1], dtype=bool)
        for _, _, pos in units:
            covered[pos] = True
        units += [(None, -1, np.array([i])) for i in np.flatnonzero(~covered)]  # inputs of no group stay in Z
        parents = np.stack([inputs[:, pos].mean(1) for _, _, pos in units], axis=1)
        gp, gc = resolve_groups(groups, name, len(units), children.shape[1])
        cg, pg = split_groups(children.shape[1], gc), split_groups(len(units), gp)
        kwargs = dict(options)
        if estimator == "acmi":
            columns = [np.concatenate([units[u][2] for u in block]) for block in pg]
            kwargs["phi"] = phi_from_weights(modules[name].weight, cg, columns, phi)
        eta = ESTIMATORS[estimator](children, parents, cg, pg, seed=seed * 100_003 + index, **kwargs)
        per_parent = np.nanmax(eta, axis=0) if reduce == "max" else np.nanmean(eta, axis=0)
        unit_score = np.empty(len(units))
        for p, block in enumerate(pg):
            unit_score[block] = per_parent[p]
        for gid in {u[0] for u in units if u[0] in collected}:
            vec = np.zeros(graph.group(gid).size)
            for u, (uid, c, _) in enumerate(units):
                if uid == gid:
                    vec[c] = unit_score[u]
            collected[gid].append(vec)
        timings[name] = time.perf_counter() - start
    scores, fallback = {}, []
    for group in prunable:
        if collected[group.id]:
            stack = np.stack(collected[group.id])
            combined = stack.max(0) if reduce == "max" else stack.mean(0)
            scores[group.id] = torch.as_tensor(np.nan_to_num(combined, nan=0.0).clip(min=0.0))
        else:
            from .magnitude import L1

            scores[group.id] = L1().score(model, _OneGroup(group))[group.id]
            fallback.append(group.id)
    return scores, {"consumers": len(consumers), "samples": len(acts), "fallback_l1": fallback,
                    "estimator_options": options, "seconds_per_layer": timings}


class _OneGroup:
    """A graph view with a single prunable group (to ask another criterion about it)."""

    def __init__(self, group):
        self.prunable_groups = [group]
        self.groups = [group]


ESTIMATOR_OPTIONS = {"acmi": ("eps", "z_occupancy", "c_h", "proj_dim", "n_hashes"), "mst": ("memory_mb",)}
SCORE_OPTIONS = ("per_class", "groups", "phi", "reduce", "seed", "batch_size", "progress")


def criterion_scores(model: nn.Module, graph, data, estimator: str, options: Mapping[str, Any]
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """``channel_scores`` behind the engine's criterion interface: flat ``options`` checked and split."""
    options = dict(options)
    granularity = options.pop("granularity", "filter")
    if granularity != "filter":
        raise ValueError(
            f"granularity={granularity!r}: the thesis's connection granularity gives kernel masks, not channels "
            "the engine can remove; use edgeslim.compress.criteria.connection.connection_prune(model, data, "
            "method=...) "
            "(or benchmarks/snacs_thesis.py) for it")
    allowed = set(SCORE_OPTIONS) | set(ESTIMATOR_OPTIONS[estimator]) | ({"phi"} if estimator == "acmi" else set())
    if estimator == "mst":
        allowed.discard("phi")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for this criterion; valid: {', '.join(sorted(allowed))}")
    est = {k: options.pop(k) for k in ESTIMATOR_OPTIONS[estimator] if k in options}
    if data is None:
        raise ValueError("connectivity criteria need calibration data (data=a Dataset or DataLoader; CLI: --data)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return channel_scores(model, graph, data, estimator=estimator, device=device, estimator_options=est, **options)
