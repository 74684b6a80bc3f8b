"""Write a run's result as report.json + report.md + report.html with a plot of what changed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "plot_widths", "layer_rows", "summary_rows", "FOOTNOTE"]

FOOTNOTE = ("MACs count convolutions and matrix multiplies (FLOPs = 2 × MACs); latency is measured, "
            "dense and slim interleaved in one process. Full numbers: `report.json`.")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v / 1e6:.3f} M"
    return str(v)


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, dense, slim, slim vs dense) rows of a result with ``dense`` and ``slim`` entries."""
    dense, slim = result.get("dense") or {}, result.get("slim") or {}
    if not dense:
        return []
    rows = []
    for key, label in (("accuracy", "test accuracy (%)"), ("macs", "MACs"), ("params", "parameters")):
        d, s = dense.get(key), slim.get(key)
        ratio = f"{s / d:.3f}" if isinstance(d, (int, float)) and isinstance(s, (int, float)) and d else "—"
        rows.append((label, _fmt(d), _fmt(s), ratio))
    dl, sl = dense.get("latency_ms") or {}, slim.get("latency_ms") or {}
    for q in ("p50", "p90", "p99"):
        if q in dl:
            ratio = f"{dl[q] / sl[q]:.2f}× faster" if sl.get(q) else "—"
            rows.append((f"latency {q} (ms)", _fmt(dl.get(q), 3), _fmt(sl.get(q), 3), ratio))
    return rows


def plot_widths(dense_layers: list[dict], slim_layers: list[dict], path: Path, title: str = "") -> Path | None:
    """Bar chart of each conv/linear layer's output width, dense vs slim, written to ``path``."""
    from .plots import to_png, widths_figure

    fig = widths_figure(dense_layers, slim_layers, title)
    if fig is None:
        return None
    to_png(fig, path)
    return Path(path)


def layer_rows(layers: list[dict] | None) -> list[dict]:
    """The part of ``count(...).layers`` a report keeps (enough to redraw its plots later)."""
    keep = ("name", "type", "output_shape", "macs", "params")
    return [{k: l.get(k) for k in keep} for l in layers or []]


def write_report(out_dir: str | Path, result: dict[str, Any], dense_layers: list[dict] | None = None,
                 slim_layers: list[dict] | None = None, title: str = "edgeslim report") -> dict[str, str]:
    """Write report.json, report.md, widths.png and a self-contained report.html into ``out_dir``;
    returns their paths. report.json keeps the per-layer widths, so ``edgeslim report DIR`` can
    redraw everything later."""
    from ..cli import to_jsonable
    from .html import render_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "html": str(out / "report.html")}
    saved = dict(result)
    if dense_layers and slim_layers:
        saved["layers"] = {"dense": layer_rows(dense_layers), "slim": layer_rows(slim_layers)}
    saved.setdefault("title", title)
    saved = to_jsonable(saved)
    with open(paths["json"], "w") as f:
        json.dump(saved, f, indent=2)
    Path(paths["html"]).write_text(render_html(saved, title=title))

    lines = [f"# {title}", ""]
    rows = summary_rows(result)
    if rows:
        lines += ["| | dense | slim | slim / dense |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in rows]
        lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if dense_layers and slim_layers:
        png = plot_widths(dense_layers, slim_layers, out / "widths.png")
        if png:
            paths["widths_plot"] = str(png)
            lines += ["", "![layer widths, dense vs slim](widths.png)", ""]
    lines += ["", FOOTNOTE, "", "Self-contained version with all plots: `report.html`.", ""]
    Path(paths["markdown"]).write_text("\n".join(lines))
    return paths
