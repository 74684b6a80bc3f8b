"""Write a run's result as report.json + report.md with a plot of what changed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "plot_widths"]


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v / 1e6:.3f} M"
    return str(v)


def plot_widths(dense_layers: list[dict], slim_layers: list[dict], path: Path, title: str = "") -> Path | None:
    """Bar chart of each conv/linear layer's output width, dense vs slim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def widths(layers):
        return {l["name"]: l["output_shape"][1] for l in layers
                if l["type"] in ("Conv2d", "Linear") and l.get("output_shape") and len(l["output_shape"]) > 1}

    dense, slim = widths(dense_layers), widths(slim_layers)
    names = [n for n in dense]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 3.5))
    xs = range(len(names))
    ax.bar(xs, [dense[n] for n in names], color="#c7d2e0", label="dense")
    ax.bar(xs, [slim.get(n, 0) for n in names], color="#2b6cb0", width=0.5, label="slim")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title or "layer widths: dense vs slim")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, result: dict[str, Any], dense_layers: list[dict] | None = None,
                 slim_layers: list[dict] | None = None, title: str = "edgeslim report") -> dict[str, str]:
    """Write report.json, report.md and widths.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    from ..cli import to_jsonable

    with open(paths["json"], "w") as f:
        json.dump(to_jsonable(result), f, indent=2)
    lines = [f"# {title}", ""]
    dense, slim = result.get("dense", {}), result.get("slim", {})
    if dense:
        lines += ["| | dense | slim | slim / dense |", "|---|---|---|---|"]
        for key, label in (("accuracy", "test accuracy (%)"), ("macs", "MACs"), ("params", "parameters")):
            d, s = dense.get(key), slim.get(key)
            ratio = f"{s / d:.3f}" if isinstance(d, (int, float)) and isinstance(s, (int, float)) and d else "—"
            lines.append(f"| {label} | {_fmt(d)} | {_fmt(s)} | {ratio} |")
        dl, sl = dense.get("latency_ms") or {}, slim.get("latency_ms") or {}
        for q in ("p50", "p90", "p99"):
            if q in dl:
                ratio = f"{dl[q] / sl[q]:.2f}× faster" if sl.get(q) else "—"
                lines.append(f"| latency {q} (ms) | {_fmt(dl.get(q), 3)} | {_fmt(sl.get(q), 3)} | {ratio} |")
        lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if dense_layers and slim_layers:
        png = plot_widths(dense_layers, slim_layers, out / "widths.png")
        if png:
            paths["widths_plot"] = str(png)
            lines += ["", "![layer widths, dense vs slim](widths.png)", ""]
    lines += ["", "MACs count convolutions and matrix multiplies (FLOPs = 2 × MACs); latency is measured, "
              "dense and slim interleaved in one process. Full numbers: `report.json`.", ""]
    Path(paths["markdown"]).write_text("\n".join(lines))
    return paths
