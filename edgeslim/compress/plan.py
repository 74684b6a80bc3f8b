"""Pruning plans: which channels each group keeps, as JSON that rebuilds the slim model.

A plan lists, for every parameter dimension that loses positions, the positions it keeps (and the
role of the slice, which the equivalence proof needs), plus the operators inside modules whose
constants a module rule rewrites (e.g. PadShortcut's padding). Applying it to a freshly built
model reproduces the slim architecture exactly, so checkpoints never pickle modules.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .graph import ChannelGraph

__all__ = ["PruningPlan", "make_plan", "compose"]

PLAN_FORMAT = "edgeslim-plan/1"


@dataclass
class PruningPlan:
    groups: list[dict[str, Any]]   # {"id", "size", "keep"}: kept channel indices of every pruned group
    params: list[dict[str, Any]]   # {"param", "dim", "size", "role", "keep"}: kept positions
    ops: list[dict[str, Any]] = field(default_factory=list)  # {"module", "op", "dim", "size", "keep", ...}
    model: str = ""
    edgeslim: str = ""
    dropped: list[str] = field(default_factory=list)  # residual blocks replaced by Identity (compress.depth)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "edgeslim": self.edgeslim, "model": self.model,
                "groups": self.groups, "params": self.params, "ops": self.ops, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any] | PruningPlan | str | os.PathLike") -> "PruningPlan":
        """A plan from its dict (or a plan, or the path of a saved plan)."""
        if isinstance(d, PruningPlan):
            return d
        if isinstance(d, (str, os.PathLike)):
            return cls.load(d)
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            found = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"not an edgeslim pruning plan (format {found!r}, expected {PLAN_FORMAT!r})")
        return cls(groups=list(d["groups"]), params=list(d["params"]), ops=list(d.get("ops", [])),
                   model=d.get("model", ""), edgeslim=d.get("edgeslim", ""),
                   dropped=list(d.get("dropped", [])))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruningPlan":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def kept(self, group_id: str) -> list[int]:
        for g in self.groups:
            if g["id"] == group_id:
                return list(g["keep"])
        raise KeyError(f"group {group_id!r} is not pruned by this plan")

    def summary(self) -> dict[str, Any]:
        total = sum(g["size"] for g in self.groups)
        kept = sum(len(g["keep"]) for g in self.groups)
        return {"pruned_groups": len(self.groups), "channels": total, "kept": kept}

    def __repr__(self) -> str:
        s = self.summary()
        return f"PruningPlan({s['pruned_groups']} groups pruned, {s['kept']}/{s['channels']} of their channels kept)"


def removed_classes(graph: ChannelGraph, keep: Mapping[str, Any]) -> np.ndarray:
    """Boolean array over the graph's channel classes: True where the class is removed."""
    removed = np.zeros(graph.num_classes, dtype=bool)
    for gid, kept in keep.items():
        g = graph.group(gid)
        kept = np.unique(np.asarray(torch.as_tensor(kept).cpu(), dtype=np.int64).ravel())
        if kept.size and (kept.min() < 0 or kept.max() >= g.size):
            raise ValueError(f"group {gid}: kept indices must lie in [0, {g.size})")
        if kept.size == g.size:
            continue
        if not g.prunable:
            raise ValueError(f"group {gid} cannot be pruned: {g.reason}")
        if kept.size == 0:
            raise ValueError(f"group {gid} would lose all {g.size} channels; keep at least one")
        mask = np.ones(g.size, dtype=bool)
        mask[kept] = False
        removed[g.classes[mask]] = True
    return removed


def make_plan(graph: ChannelGraph, keep: Mapping[str, Any]) -> PruningPlan:
    """The plan that keeps, for each group id in ``keep``, the channel indices given (others stay whole)."""
    from .. import __version__

    removed = removed_classes(graph, keep)
    groups = []
    for g in graph.groups:
        gone = removed[g.classes]
        if gone.any():
            groups.append({"id": g.id, "size": g.size, "keep": np.nonzero(~gone)[0].tolist()})
    params = []
    for pd in graph.param_dims:
        gone = removed[pd.classes]
        if gone.any():
            params.append({"param": pd.name, "dim": pd.dim, "size": len(pd.classes), "role": pd.role,
                           "keep": np.nonzero(~gone)[0].tolist()})
    ops = []
    for rec in graph.op_records:
        gone = removed[rec.classes]
        if gone.any():
            ops.append({"module": rec.module, "op": rec.op, "dim": rec.dim, "size": len(rec.classes),
                        "keep": np.nonzero(~gone)[0].tolist(), **rec.info})
    return PruningPlan(groups, params, ops, model=graph.model_type, edgeslim=__version__)


def compose(first: PruningPlan | Mapping[str, Any] | None, second: PruningPlan | Mapping[str, Any]) -> PruningPlan:
    """The single plan that does ``first`` and then ``second`` (a plan made on the slim model of
    ``first``), expressed in the positions of the original model: pruning a pruned checkpoint again
    still gives a checkpoint that rebuilds from the original architecture."""
    second = PruningPlan.from_dict(second)
    if first is None:
        return second
    first = PruningPlan.from_dict(first)
    params = {(c["param"], c["dim"]): dict(c) for c in first.params}
    for c in second.params:
        key = (c["param"], c["dim"])
        if key in params:
            outer = params[key]
            params[key] = {**outer, "keep": [outer["keep"][i] for i in c["keep"]]}
        else:
            params[key] = dict(c)
    ops = {(o["module"], o["op"], o["dim"]): dict(o) for o in first.ops}
    for o in second.ops:
        key = (o["module"], o["op"], o["dim"])
        if key in ops:
            outer = ops[key]
            ops[key] = {**outer, "keep": [outer["keep"][i] for i in o["keep"]]}
        else:
            ops[key] = dict(o)
    return PruningPlan(groups=second.groups, params=list(params.values()), ops=list(ops.values()),
                       model=second.model or first.model, edgeslim=second.edgeslim,
                       dropped=first.dropped + [p for p in second.dropped if p not in first.dropped])
