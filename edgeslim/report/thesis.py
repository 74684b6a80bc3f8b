""""Ours vs thesis" tables, printed by the reproduction scripts in ``benchmarks/``.

A row pairs one measured number with the thesis's number for the same quantity. Rows whose
measurement is missing (a run that was not done, a data set that is not available) print "not
run" instead of a number, never a guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["TargetRow", "compare_table", "recipe_rows"]

METRIC_NAMES = {"top1": "top-1 accuracy (%)", "params_pruned_pct": "parameters pruned (%)",
                "flops_reduced_pct": "FLOPs reduced (%)"}


@dataclass(frozen=True)
class TargetRow:
    run: str                 # e.g. "ResNet-56 / CIFAR-10, SNACS tau=0.685"
    metric: str              # e.g. "top1"
    thesis: float
    ours: float | None = None
    source: str = ""         # thesis table / lines

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "metric": self.metric, "thesis": self.thesis, "ours": self.ours,
                "delta": None if self.ours is None else self.ours - self.thesis, "source": self.source}


def compare_table(rows: Iterable[TargetRow]) -> str:
    """A Markdown table: run | metric | ours | thesis | ours - thesis | source."""
    lines = ["| run | metric | ours | thesis | ours − thesis | source |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ours = "not run" if r.ours is None else f"{r.ours:.2f}"
        delta = "" if r.ours is None else f"{r.ours - r.thesis:+.2f}"
        lines.append(f"| {r.run} | {METRIC_NAMES.get(r.metric, r.metric)} | {ours} | {r.thesis:.2f} | {delta} "
                     f"| {r.source} |")
    return "\n".join(lines)


def recipe_rows(recipe, ours: dict[str, float | None], run: str | None = None) -> list[TargetRow]:
    """One row per thesis target of ``recipe`` (a ``training.recipes.Recipe``), with our measured values."""
    return [TargetRow(run or recipe.name, metric, value, ours.get(metric), recipe.source)
            for metric, value in recipe.targets.items()]
