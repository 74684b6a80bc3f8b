"""How often each channel is used: the under-utilisation diagnostic of the thesis (section 3.4.3, Fig. 3.4;
specs/seed-raju.md A.9).

For every gated FBS block and every output channel, ``channel_usage`` counts the examples of a data set
for which the channel was used, i.e. kept by the winner-take-all with a non-zero saliency (a kept
channel whose ReLU saliency is 0 outputs exactly 0, like a suppressed one). The thesis found that in
intermediate layers many channels are never used by any test image and that the number of ever-used
channels is close to the static-pruning (SCP) budget d*C. ``plot_usage`` draws the sorted counts per
layer with the SCP budget in red, as in Fig. 3.4.

The same pass records the mean gate E[pi_c] and the mean routing weights E[alpha], which
``to_static`` needs to freeze a dynamic model into a plain one. ``slim_by_usage`` then removes, through
the slimming engine, the channels no example (or at most a ``threshold`` fraction of them) used, and
returns a plain static model that is physically smaller. This is an empirical, data-dependent static
prune, not part of the thesis's method: the saliency boost and the expert mixture are input-dependent
and are frozen at their data-set means, so the static model's accuracy must be measured (and is
usually recovered by a short fine-tune).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ...data import make_loader
from .convert import to_static
from .layer import fbs_layers

__all__ = ["LayerUsage", "UsageReport", "channel_usage", "plot_usage", "UsageSlimResult", "slim_by_usage"]


@dataclass
class LayerUsage:
    name: str
    density: float
    k: int                    # channels kept per example, ceil(d * C)
    counts: torch.Tensor      # (C,) examples that used each channel
    gate_sum: torch.Tensor    # (C,) sum of the gate pi_c over examples
    alpha_sum: torch.Tensor | None  # (E,) sum of the routing weights, None without experts
    samples: int

    @property
    def channels(self) -> int:
        return len(self.counts)

    @property
    def scp_budget(self) -> float:
        """Channels of the static-pruning baseline of equal MACs: d * C (fractional, as in the thesis)."""
        return self.density * self.channels

    @property
    def never_used(self) -> int:
        return int((self.counts == 0).sum())

    @property
    def always_used(self) -> int:
        return int((self.counts == self.samples).sum())

    @property
    def effective_width(self) -> int:
        """Channels used by at least one example."""
        return int((self.counts > 0).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "density": self.density, "k": self.k,
                "scp_budget": self.scp_budget, "effective_width": self.effective_width,
                "never_used": self.never_used, "always_used": self.always_used,
                "counts": self.counts.tolist()}


@dataclass
class UsageReport:
    samples: int
    layers: list[LayerUsage]

    def mean_gate(self) -> dict[str, torch.Tensor]:
        return {u.name: u.gate_sum / self.samples for u in self.layers}

    def mean_alpha(self) -> dict[str, torch.Tensor]:
        return {u.name: u.alpha_sum / self.samples for u in self.layers if u.alpha_sum is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "layers": [u.to_dict() for u in self.layers],
                "effective_width": sum(u.effective_width for u in self.layers),
                "channels": sum(u.channels for u in self.layers),
                "never_used": sum(u.never_used for u in self.layers)}


@torch.no_grad()
def channel_usage(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256, progress: bool = True,
                  device: str = "cpu") -> UsageReport:
    """Count, over ``data``, how many examples used each channel of every gated FBS block of ``model``."""
    blocks = [(name, m) for name, m in fbs_layers(model) if m.gated]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no gated FBS-CondConv blocks (build it with a gate density)")
    loader = data if isinstance(data, DataLoader) else make_loader(data, batch_size)
    counts = {name: torch.zeros(m.out_channels, dtype=torch.long) for name, m in blocks}
    gates = {name: torch.zeros(m.out_channels, dtype=torch.float64) for name, m in blocks}
    alphas = {name: torch.zeros(m.experts, dtype=torch.float64) for name, m in blocks if m.experts > 1}
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for x, _ in tqdm(loader, desc="channel usage", unit="batch", disable=not progress, leave=False):
            model(x.to(device))
            for name, m in blocks:
                gate = m.gate.detach().cpu()
                counts[name] += (gate != 0).sum(0)
                gates[name] += gate.sum(0).double()
                if name in alphas:
                    alphas[name] += m.alpha.detach().cpu().sum(0).double()
            seen += len(x)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("channel usage needs a non-empty data set")
    layers = [LayerUsage(name, m.density, m.k, counts[name], gates[name].float(),
                         alphas[name].float() if name in alphas else None, seen) for name, m in blocks]
    return UsageReport(seen, layers)


def plot_usage(report: UsageReport, path: str | Path, title: str = "") -> Path:
    """Sorted per-channel usage counts, one subplot per layer, SCP budget in red (thesis Fig. 3.4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report.layers)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, u in zip(axes.flat, report.layers):
        ordered = torch.sort(u.counts, descending=True).values.numpy()
        ax.bar(range(u.channels), ordered, width=1.0, color="tab:blue")
        # SCP keeps d*C channels for every image: a segment at height N over the first d*C ranks.
        ax.hlines(report.samples, 0, u.scp_budget, colors="red", linewidth=2.5, label="SCP budget (d·C)")
        ax.set_title(f"{u.name}\nused {u.effective_width}/{u.channels}, never {u.never_used}", fontsize=8)
        ax.set_xlim(0, u.channels)
        ax.set_ylim(0, report.samples * 1.05)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    fig.supxlabel("channels, sorted by usage", fontsize=9)
    fig.supylabel(f"examples using the channel (of {report.samples})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class UsageSlimResult:
    model: nn.Module      # plain conv-BN-act model without the removed channels (physically smaller)
    static: nn.Module     # the same before removal: FBS blocks frozen into conv-BN-act, every channel present
    plan: Any             # the engine's PruningPlan (JSON-serialisable)
    channels: dict[str, dict[str, int]]  # per FBS block: {"channels", "kept"}
    equivalence_error: float  # engine's surgery proof: slim vs static with the removed channels' reads zeroed
    removal_error: float      # slim vs static as they are: 0 up to rounding when only unused channels go

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "equivalence_error": self.equivalence_error,
                "removal_error": self.removal_error, "kept": sum(c["kept"] for c in self.channels.values()),
                "total": sum(c["channels"] for c in self.channels.values()), "plan": self.plan.to_dict()}


@torch.no_grad()
def slim_by_usage(model: nn.Module, usage: UsageReport, example_inputs: torch.Tensor,
                  threshold: float = 0.0) -> UsageSlimResult:
    """A plain, physically smaller model without the channels used by at most ``threshold`` of the examples.

    ``usage`` comes from ``channel_usage`` on calibration data (the training set, not the test set).
    Each FBS block becomes conv-BN-act with the mean expert mixture and the mean gate folded into BN
    (``to_static``); channels whose usage fraction is <= ``threshold`` are removed with the slimming
    engine (a channel that never fires has a mean gate of exactly 0, so removing it changes nothing).
    A channel group that other layers also produce (e.g. a residual sum with an ungated branch) is cut
    only where every producer is a gated block; there a channel goes when no producer uses it. Every
    group keeps at least its most used channel. ``model`` is not modified.
    """
    from .. import make_plan, trace
    from ..surgery import apply_plan, equivalence_error

    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is the largest usage fraction removed, in [0, 1); got {threshold}")
    static = to_static(model, usage.mean_alpha(), usage.mean_gate()).eval()
    fraction = {f"{u.name}.0": u.counts.double() / usage.samples for u in usage.layers}  # static conv paths
    graph = trace(static, (example_inputs,))
    keep, channels = {}, {}
    for group in graph.groups:
        producers = [s for s in group.producers if s.role == "out"]
        if not group.prunable or not producers or any(s.module not in fraction for s in producers):
            continue
        used = torch.zeros(group.size, dtype=torch.float64)
        for s in producers:
            index = torch.arange(group.size) if s.index is None else s.index.reshape(group.size, -1)[:, 0]
            used = torch.maximum(used, fraction[s.module][index])
        kept = (used > threshold).nonzero().flatten()
        keep[group.id] = (kept if len(kept) else used.argmax()[None]).tolist()
        for s in producers:
            channels[s.module.rpartition(".")[0]] = {"channels": group.size, "kept": len(keep[group.id])}
    plan = make_plan(graph, keep)
    slim = apply_plan(static, plan).eval()
    reference = static(example_inputs)
    removal = float((slim(example_inputs) - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return UsageSlimResult(slim, static, plan, channels, float(equivalence_error(static, slim, plan, example_inputs)),
                           removal)
