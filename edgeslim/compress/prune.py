"""``edgeslim.prune``: trace, score, plan, cut, prove."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .criteria import get_criterion
from .graph import ChannelGraph
from .plan import PruningPlan, make_plan
from .surgery import apply_plan, equivalence_error
from .targets import parse_target, resolve_rounding, solve
from .trace import trace

__all__ = ["prune", "PruneResult", "EQUIVALENCE_TOLERANCE"]

EQUIVALENCE_TOLERANCE = 1e-4  # max relative difference between the slim and the masked model


@dataclass
class PruneResult:
    model: nn.Module                     # a new, physically smaller model
    plan: PruningPlan
    graph: ChannelGraph
    scores: dict[str, torch.Tensor]
    achieved: dict[str, float]           # slim / dense: channels, macs, params (macs, params from edgeslim.count)
    timing: dict[str, float]             # scoring_s (trace + criterion), surgery_s (plan + surgery + proof)
    dense: dict[str, int] = field(default_factory=dict)   # macs, params of the input model
    slim: dict[str, int] = field(default_factory=dict)
    equivalence_error: float | None = None   # relative error of slim vs masked model (None: not checked)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"achieved": self.achieved, "timing": self.timing, "dense": self.dense, "slim": self.slim,
                "equivalence_error": self.equivalence_error, "notes": self.notes,
                "groups": len(self.graph.groups), "prunable_groups": len(self.graph.prunable_groups),
                "pruned_groups": len(self.plan.groups)}


def as_loader(data: Dataset | DataLoader | None, batch_size: int = 64) -> DataLoader | None:
    if data is None or isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        from ..data import make_loader

        return make_loader(data, batch_size)
    raise ValueError(f"data must be a torch Dataset or DataLoader, not {type(data).__name__}")


def prune(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], method: str = "l1",
          target: Mapping[str, float] | str | None = None, data: Dataset | DataLoader | None = None,
          round_to: int | str | Any = None, device: str | None = None, ignore: Iterable[Any] = (),
          criterion_options: Mapping[str, Any] | None = None, progress: bool = True, min_keep: float = 0.1,
          verify: bool = True) -> PruneResult:
    """Compress ``model`` to ``target`` by removing whole channels, and prove the cut.

    ``target``: ``{"channels"|"macs"|"params": ratio}`` (or ``"macs=0.5"``), the slim/dense ratio to
    reach (within 2 % below it); default ``{"macs": 0.5}``. ``data``: calibration data for
    data-driven criteria. ``round_to``: None, N (channel counts in multiples of N), ``"device"``
    (the device profile's preferred multiple; needs ``device``) or ``f(group, n) -> n``.
    ``ignore``: modules whose channels stay as they are. ``min_keep``: every group keeps at least
    this fraction (and one channel). ``verify``: check that the slim model computes what the masked
    original computes (relative error < 1e-4) and raise if not.
    """
    from ..metrics import count

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    target = parse_target(target)
    rounding = resolve_rounding(round_to, device)
    criterion = get_criterion(method)
    loader = as_loader(data)
    if criterion.needs_data and loader is None:
        raise ValueError(f"method {criterion.name!r} needs calibration data (data=a Dataset or DataLoader; CLI: --data)")

    t0 = time.perf_counter()
    graph = trace(model, inputs, ignore=ignore)
    was_training = model.training
    try:
        scores = criterion.score(model, graph, loader, **dict(criterion_options or {}))
    finally:
        model.train(was_training)
    scoring_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    solution = solve(graph, scores, target, rounding, min_keep,
                     context={"model": model, "example_inputs": inputs, "device": device})
    plan = make_plan(graph, solution.keep)
    slim = apply_plan(model, plan)
    error = None
    if verify:
        error = equivalence_error(model, slim, plan, inputs)
        if not error < EQUIVALENCE_TOLERANCE:
            raise RuntimeError(
                f"surgery check failed: the slim model differs from the masked original by {error:.2e} (relative). "
                "A Python constant in forward() probably pins a channel count that edgeslim cut; keep that part "
                "with ignore=[module path] or register a module rule that rewrites it.")
    surgery_s = time.perf_counter() - t0

    dense_cost, slim_cost = count(model, inputs), count(slim, inputs)
    achieved = {"channels": solution.achieved["channels"],
                "macs": slim_cost.macs / dense_cost.macs if dense_cost.macs else 1.0,
                "params": slim_cost.params / dense_cost.params if dense_cost.params else 1.0}
    notes = list(solution.notes)
    for key in ("macs", "params"):
        if abs(achieved[key] - solution.achieved[key]) > 1e-3:
            notes.append(f"{key}: counted {achieved[key]:.4f} on the slim model, the graph predicted "
                         f"{solution.achieved[key]:.4f}")
    return PruneResult(
        model=slim, plan=plan, graph=graph, scores=scores, achieved=achieved,
        timing={"scoring_s": scoring_s, "surgery_s": surgery_s},
        dense={"macs": dense_cost.macs, "params": dense_cost.params},
        slim={"macs": slim_cost.macs, "params": slim_cost.params},
        equivalence_error=error, notes=notes,
    )
