"""Turning scores and a target into kept channels.

Ranking: each group's scores are divided by their mean, so a score of 1 means "an average channel
of this group"; channels of all prunable groups are then ranked together (global ranking). Every
group keeps at least ``max(1, ceil(min_keep * size))`` channels (the per-layer floor), so no layer
collapses. Removing the lowest-ranked channels one by one lowers every cost monotonically, so the
number to remove is found by binary search on the exact cost of the resulting slim model:

* ``channels``: kept fraction of the prunable groups' channels,
* ``macs``: multiply-accumulates of convolutions, linear layers, matrix products and attention,
  computed from the traced graph (the same operators and formulas as ``edgeslim.count``),
* ``params``: parameter count (buffers such as BatchNorm statistics excluded, as in ``count``).

Rounding (``round_to``): an int N keeps every group's count a multiple of N (or the whole group
when it is smaller than N or the next multiple would exceed it); a callable ``(group, n) -> n``
decides itself; ``"device"`` on this host's CPU (``device="cpu"``) picks the widths ONNX Runtime
runs fastest, measured (``edgeslim.runtime.channels.DeviceRounding``), and for any other device
asks its profile (``edgeslim.devices``) for its preferred multiple. Further cost models plug in with
:func:`register_cost_model`; ``latency`` (ms on this CPU, estimated from measured probes) is
``edgeslim.runtime.target.latency_cost_model``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .graph import ChannelGraph, ChannelGroup

__all__ = ["parse_target", "solve", "CostModel", "register_cost_model", "COST_MODELS", "resolve_rounding",
           "UnreachableTarget"]

TOLERANCE = 0.02  # achieved ratios land within 2 % (relative) below the target when granularity allows


class CostModel:
    """Exact cost ratios (slim / dense) of keeping some channel classes, from the traced graph."""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.macs_dense = sum(t.macs for t in graph.mac_terms)
        # params: numel of each parameter = product over its dimensions of the kept positions
        self.params_dense = sum(math.prod(s) for n, s in graph.param_shapes.items() if n not in graph.buffers)
        self._param_dims: dict[str, list] = {}
        for pd in graph.param_dims:
            if not pd.is_buffer:
                self._param_dims.setdefault(pd.name, []).append(pd)
        self.prunable = graph.prunable_groups
        self.channels_dense = sum(g.size for g in self.prunable)

    def macs(self, kept: np.ndarray) -> float:
        total = 0.0
        for term in self.graph.mac_terms:
            f = 1.0
            for factor in term.factors:
                if factor.size:
                    f *= kept[factor].mean()
            total += term.macs * f
        return total

    def params(self, kept: np.ndarray) -> float:
        total = self.params_dense
        for name, dims in self._param_dims.items():
            dense = math.prod(self.graph.param_shapes[name])
            slim = dense
            for pd in dims:
                slim *= kept[pd.classes].mean()
            total += slim - dense
        return total

    def kept_shapes(self, kept: np.ndarray) -> dict[str, tuple[int, ...]]:
        """The slim shape of every parameter and buffer that loses positions (for layer-wise cost models,
        e.g. a latency table per convolution shape)."""
        shapes: dict[str, list[int]] = {}
        for pd in self.graph.param_dims:
            shape = shapes.setdefault(pd.name, list(self.graph.param_shapes[pd.name]))
            shape[pd.dim] = int(kept[pd.classes].sum())
        return {name: tuple(shape) for name, shape in shapes.items()}

    def ratios(self, kept: np.ndarray, counts: Mapping[str, int] | None = None) -> dict[str, float]:
        if counts is None:
            channels = sum(int(kept[g.classes].sum()) for g in self.prunable)
        else:
            channels = sum(counts.values())
        return {
            "channels": channels / self.channels_dense if self.channels_dense else 1.0,
            "macs": self.macs(kept) / self.macs_dense if self.macs_dense else 1.0,
            "params": self.params(kept) / self.params_dense if self.params_dense else 1.0,
        }


# name -> factory(graph, cost_model, context) -> function(kept classes, counts) -> value compared with the target
COST_MODELS: dict[str, Callable[..., Callable[[np.ndarray, Mapping[str, int]], float]]] = {
    "channels": lambda graph, cm, ctx: (lambda kept, counts: cm.ratios(kept, counts)["channels"]),
    "macs": lambda graph, cm, ctx: (lambda kept, counts: cm.macs(kept) / cm.macs_dense),
    "params": lambda graph, cm, ctx: (lambda kept, counts: cm.params(kept) / cm.params_dense),
}


def _latency(graph, cm, ctx):
    from ..runtime.target import latency_cost_model  # imported on use: measuring needs onnxruntime

    return latency_cost_model(graph, cm, ctx)


COST_MODELS["latency"] = _latency


def register_cost_model(name: str):
    """Register a target kind: ``factory(graph, cost_model, context) -> cost(kept, counts) -> value``.

    ``context`` holds ``model``, ``example_inputs`` and ``device``. ``kept`` is a boolean array over
    the graph's channel classes, ``counts`` the kept channel count of every prunable group;
    ``cost_model.kept_shapes(kept)`` gives the slim shape of every parameter. The solver removes
    channels until ``cost <= target``, so the cost must not increase as channels are removed.
    The issue-8 latency model registers ``"latency"`` this way."""

    def deco(factory):
        COST_MODELS[name] = factory
        return factory

    return deco


def parse_target(target: Mapping[str, Any] | str | None) -> dict[str, float]:
    """``{"macs": 0.5}`` or ``"macs=0.5,params=0.4"`` -> ``{"macs": 0.5, "params": 0.4}``."""
    if target is None:
        return {"macs": 0.5}
    if isinstance(target, str):
        parsed: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in target.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"target {part!r} must look like macs=0.5 (kinds: channels, macs, params, latency)")
            parsed[key.strip()] = value.strip()
        target = parsed
    out = {}
    for key, value in dict(target).items():
        if key == "latency" or key not in COST_MODELS:
            if key == "latency" and "latency" not in COST_MODELS:
                raise NotImplementedError(
                    "latency targets need a latency model of the target device, which comes with the device "
                    "profiles (edgeslim.devices); use channels=, macs= or params= for now")
            if key not in COST_MODELS:
                raise ValueError(f"unknown target {key!r}; use {', '.join(sorted(COST_MODELS))} (e.g. macs=0.5)")
        if isinstance(value, str):
            text = value.strip().lower()
            if text.endswith("%"):
                value = float(text[:-1]) / 100
            elif key == "latency" and text.endswith("ms"):
                value = float(text[:-2])
            else:
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(f"target {key}={value!r} is not a number") from None
        value = float(value)
        if key != "latency" and not 0 < value <= 1:
            raise ValueError(f"target {key}={value} must be a ratio of the dense model in (0, 1], e.g. {key}=0.5")
        out[key] = value
    if not out:
        raise ValueError("empty target; use e.g. macs=0.5")
    return out


def resolve_rounding(round_to: Any, device: str | None, model: Any = None,
                     example_inputs: Any = None) -> Callable[[ChannelGroup, int], int] | None:
    """``round_to`` as a function ``(group, kept) -> kept`` (None: no rounding)."""
    if round_to is None or round_to == 1:
        return None
    if callable(round_to):
        return round_to
    if round_to == "device":
        if device is None:
            raise ValueError("round_to='device' needs a device profile name (device=...)")
        if device == "cpu" and model is not None:
            # This host's CPU can be measured: widths the runtime (ONNX Runtime) runs fastest, timed.
            from ..runtime.channels import DeviceRounding

            return DeviceRounding(model, example_inputs, runtime="ort", device="cpu")
        try:
            from ..devices import get_device
        except ImportError:
            raise NotImplementedError(
                "round_to='device' needs the device profiles (edgeslim.devices.get_device), which are not in "
                "this build; pass an integer such as round_to=8") from None
        round_to = int(get_device(device).preferred_channel_multiple)
    if isinstance(round_to, str) and round_to.isdigit():
        round_to = int(round_to)
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be None, a positive int, 'device' or a function, not {round_to!r}")
    n = round_to

    def multiple(group: ChannelGroup, kept: int) -> int:
        if group.size <= n:
            return group.size
        up = -(-kept // n) * n
        return group.size if up > group.size else up

    return multiple


class UnreachableTarget(ValueError):
    """No plan within ``min_keep`` and the rounding reaches the target."""


@dataclass
class Solution:
    keep: dict[str, np.ndarray]     # kept channel indices per pruned group
    achieved: dict[str, float]      # ratios of the plan, from the graph
    removed: int                    # channels removed before rounding
    notes: list[str]


def solve(graph: ChannelGraph, scores: Mapping[str, torch.Tensor], target: Mapping[str, float],
          round_to: Callable[[ChannelGroup, int], int] | None = None, min_keep: float = 0.1,
          context: Mapping[str, Any] | None = None,
          channel_cost: Callable[[ChannelGroup], float] | None = None) -> Solution:
    """``channel_cost(group)``: what removing one of the group's channels saves (e.g. measured ms);
    the global ranking then orders channels by importance per unit saved, so the budget is taken
    where it buys the most. None: by importance alone."""
    if not 0 <= min_keep <= 1:
        raise ValueError(f"min_keep must lie in [0, 1], got {min_keep}")
    groups = graph.prunable_groups
    cm = CostModel(graph)
    costs = {k: COST_MODELS[k](graph, cm, dict(context or {})) for k in target}
    if not groups:
        raise ValueError("the model has no prunable channel groups (see edgeslim.trace(...).groups for the reasons)")

    weight = _relative_costs(groups, channel_cost)
    # per-group order (least important first) and the global removal sequence
    order, removable = {}, []
    for gi, g in enumerate(groups):
        if g.id not in scores:
            raise ValueError(f"the criterion gave no scores for group {g.id}")
        s = torch.as_tensor(scores[g.id], dtype=torch.float64).detach().cpu().flatten()
        if s.numel() != g.size or not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"scores of group {g.id} must be {g.size} finite non-negative numbers")
        norm = (s / s.mean()).numpy() if s.mean() > 0 else np.zeros(g.size)
        rank = np.lexsort((np.arange(g.size), norm))  # ascending score, ties by index
        order[g.id] = rank
        floor = max(1, math.ceil(min_keep * g.size))
        for j, c in enumerate(rank[: g.size - floor]):
            removable.append((norm[c] / weight[gi], gi, j))
    removable.sort()
    group_of = np.asarray([gi for _, gi, _ in removable], dtype=np.int64)

    def config(removed: np.ndarray) -> tuple[np.ndarray, dict[str, int], dict[str, np.ndarray]]:
        """Kept classes, kept counts and kept indices when group i loses its ``removed[i]`` lowest channels."""
        kept_flags = np.ones(graph.num_classes, dtype=bool)
        counts, keep = {}, {}
        for gi, g in enumerate(groups):
            n = g.size - int(removed[gi])
            if round_to is not None and n < g.size:
                n = int(round_to(g, n))
                if not 1 <= n <= g.size:
                    raise ValueError(f"round_to gave {n} channels for group {g.id} of {g.size}")
            counts[g.id] = n
            if n < g.size:
                kept_flags[g.classes[order[g.id][: g.size - n]]] = False
                keep[g.id] = np.sort(order[g.id][g.size - n:])
        return kept_flags, counts, keep

    def prefix(k: int) -> np.ndarray:
        return np.bincount(group_of[:k], minlength=len(groups))

    def cost_of(removed: np.ndarray) -> dict[str, float]:
        kept, counts, _ = config(removed)
        return {key: costs[key](kept, counts) for key in target}

    def satisfied(c: dict[str, float]) -> bool:
        return all(c[key] <= value + 1e-12 for key, value in target.items())

    k_max = len(removable)
    worst = cost_of(prefix(k_max))
    if not satisfied(worst):
        closest = ", ".join(f"{key}={worst[key]:.3f}" for key in target)
        raise UnreachableTarget(
            f"target {', '.join(f'{k}={v:g}' for k, v in target.items())} cannot be reached: with every group keeping "
            f"at least {min_keep:.0%} of its channels (min_keep){' and rounding' if round_to else ''}, the closest "
            f"reachable is {closest}")
    lo, hi = 0, k_max  # the shortest prefix of the ranking that meets every target
    while lo < hi:
        mid = (lo + hi) // 2
        if satisfied(cost_of(prefix(mid))):
            hi = mid
        else:
            lo = mid + 1
    removed = prefix(lo)
    if len(target) == 1 and lo > 0:
        removed = _refine(removed, prefix(lo - 1), lo - 1, target, cost_of, group_of, groups, order, min_keep)
    kept, counts, keep = config(removed)
    achieved = cm.ratios(kept, counts)
    notes = []
    for key, value in target.items():
        got = costs[key](kept, counts)
        if got < value * (1 - TOLERANCE) and lo == 0:
            notes.append(f"{key}: the model already meets the target ({got:.4f} for a target of {value:g}): "
                         "nothing was cut")
        elif got < value * (1 - TOLERANCE):
            notes.append(f"{key}: reached {got:.4f} for a target of {value:g}; the channel groups are too coarse "
                         "(or the rounding too large) to get closer")
    return Solution(keep, achieved, int(removed.sum()), notes)


def _relative_costs(groups: list[ChannelGroup], channel_cost: Callable[[ChannelGroup], float] | None) -> np.ndarray:
    """Each group's per-channel saving relative to the mean over groups (all ones without a cost)."""
    if channel_cost is None:
        return np.ones(len(groups))
    costs = np.asarray([float(channel_cost(g)) for g in groups])
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError("channel_cost must give a finite non-negative saving for every group")
    positive = costs[costs > 0]
    # A group whose channels save nothing measurable ranks as if it saved a tenth of the smallest
    # measured saving: it is cut last, but still cut when the target needs it.
    floor = positive.min() / 10 if positive.size else 1.0
    costs = np.maximum(costs, floor)
    return costs / costs.mean()


def _refine(best: np.ndarray, start: np.ndarray, k: int, target: Mapping[str, float], cost_of, group_of: np.ndarray,
            groups: list[ChannelGroup], order: dict, min_keep: float) -> np.ndarray:
    """Close the gap left by one coarse removal (e.g. a channel of a residual stream shared by many
    layers): from the longest prefix that misses the target, keep taking the next-ranked channels
    but skip any whose removal would overshoot below ``target * (1 - TOLERANCE)``."""
    (key, value), = target.items()
    if cost_of(best)[key] >= value * (1 - TOLERANCE):
        return best
    removed = start.copy()
    limit = np.asarray([g.size - max(1, math.ceil(min_keep * g.size)) for g in groups])
    for gi in group_of[k:]:
        if removed[gi] >= limit[gi]:
            continue
        removed[gi] += 1
        c = cost_of(removed)[key]
        if c < value * (1 - TOLERANCE):
            removed[gi] -= 1  # overshoots: try a finer channel further down the ranking
        elif c <= value:
            return removed
    return best
