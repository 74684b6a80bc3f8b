"""The report's figures (matplotlib, Agg backend): per-layer widths, and several runs compared."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["layer_widths", "widths_figure", "comparison_figure", "to_png"]

DENSE_COLOR, SLIM_COLOR = "#c7d2e0", "#2b6cb0"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_widths(layers: list[dict]) -> dict[str, int]:
    """{layer name: output channels} of the conv/linear layers in a ``count(...).layers`` list."""
    return {l["name"]: l["output_shape"][1] for l in layers
            if l["type"] in ("Conv2d", "Linear") and l.get("output_shape") and len(l["output_shape"]) > 1}


def widths_figure(dense_layers: list[dict], slim_layers: list[dict], title: str = ""):
    """Bar chart of each conv/linear layer's output width, dense (light) behind slim (dark); None if no layers."""
    dense, slim = layer_widths(dense_layers), layer_widths(slim_layers)
    names = list(dense)
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(24, max(6, 0.22 * len(names))), 3.8))
    xs = range(len(names))
    ax.bar(xs, [dense[n] for n in names], color=DENSE_COLOR, label="dense")
    ax.bar(xs, [slim.get(n, 0) for n in names], color=SLIM_COLOR, width=0.5, label="slim")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=5 if len(names) > 60 else 6)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylabel("output channels")
    ax.set_title(title or "layer widths: dense vs slim")
    ax.legend()
    fig.tight_layout()
    return fig


def comparison_figure(points: list[dict[str, Any]]):
    """Several models side by side: accuracy vs MACs and latency vs MACs.

    ``points``: dicts with ``label``, ``macs`` and optional ``accuracy``, ``latency_ms`` (p50),
    ``kind`` ("dense" | "slim"). Returns None when nothing can be plotted.
    """
    points = [p for p in points if p.get("macs")]
    if not points:
        return None
    plt = _pyplot()
    panels = [("accuracy", "test accuracy (%)"), ("latency_ms", "latency p50 (ms)")]
    panels = [(k, lab) for k, lab in panels if any(p.get(k) is not None for p in points)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for p in points:
            if p.get(key) is None:
                continue
            dense = p.get("kind") == "dense"
            ax.scatter(p["macs"] / 1e6, p[key], s=60, marker="s" if dense else "o",
                       color=DENSE_COLOR if dense else SLIM_COLOR, edgecolor="#1a365d", zorder=3)
            ax.annotate(p["label"], (p["macs"] / 1e6, p[key]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel("MACs (M)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title(f"{label.split(' (')[0]} vs MACs")
    fig.tight_layout()
    return fig


def to_png(fig, path: str | Path | None = None, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (also written to ``path`` when given); the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
