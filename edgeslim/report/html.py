"""Self-contained HTML reports: one file, plots embedded as base64 PNG, no script, no network.

``render_html(result)`` is one run (dense vs slim, per-layer widths); ``write_comparison(out_dir,
run_dirs)`` puts several runs side by side (accuracy vs MACs, latency vs MACs) and is what
``edgeslim report DIR...`` writes.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .markdown import FOOTNOTE, _fmt, summary_rows
from .plots import comparison_figure, layer_widths, to_png, widths_figure

__all__ = ["render_html", "render_comparison", "load_run", "write_comparison"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1a202c;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e2e8f0;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #e2e8f0;padding:.3rem .6rem;text-align:right}th{background:#f7fafc}
td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #edf2f7}
figcaption{font-size:.85rem;color:#4a5568}.note{color:#975a16}.small{font-size:.85rem;color:#4a5568}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _img(fig, alt: str, ident: str) -> str:
    if fig is None:
        return ""
    data = base64.b64encode(to_png(fig)).decode()
    return (f'<figure id="{_e(ident)}"><img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(alt)}</figcaption></figure>")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>\n")


def _scalars(d: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """Flatten a result's small fields (runtime, timing, onnx ...) into key/value rows."""
    rows = []
    for k, v in d.items():
        if k in ("dense", "slim", "layers", "notes", "title", "history", "compared"):
            continue
        if isinstance(v, dict):
            rows += _scalars(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            rows.append([f"{prefix}{k}", _fmt(v, 4) if isinstance(v, float) else v])
    return rows


def _layer_table(layers: dict[str, list[dict]]) -> str:
    dense, slim = layer_widths(layers["dense"]), layer_widths(layers["slim"])
    slim_macs = {l["name"]: l.get("macs") for l in layers["slim"]}
    rows = [[l["name"], l["type"], dense[l["name"]], slim.get(l["name"], "—"), _fmt(l.get("macs")),
             _fmt(slim_macs.get(l["name"]))] for l in layers["dense"] if l["name"] in dense]
    return ("<details><summary>per-layer widths and MACs</summary>"
            + _table(["layer", "type", "dense width", "slim width", "dense MACs", "slim MACs"], rows) + "</details>")


def render_html(result: dict[str, Any], title: str | None = None) -> str:
    """One run: summary table, per-layer widths plot and table, notes, and every scalar detail."""
    title = title or result.get("title") or "edgeslim report"
    parts = []
    rows = summary_rows(result)
    if rows:
        parts.append("<h2>dense vs slim</h2>" + _table(["", "dense", "slim", "slim / dense"], [list(r) for r in rows]))
    notes = result.get("notes") or []
    if notes:
        parts.append("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul>")
    layers = result.get("layers")
    if layers and layers.get("dense") and layers.get("slim"):
        parts.append("<h2>layer widths</h2>" + _img(widths_figure(layers["dense"], layers["slim"]),
                                                     "output channels of every conv/linear layer, dense vs slim",
                                                     "plot-widths"))
        parts.append(_layer_table(layers))
    details = _scalars(result)
    if details:
        parts.append("<h2>details</h2>" + _table(["key", "value"], details))
    parts.append(f'<p class="small">{_e(FOOTNOTE.replace("`", ""))}</p>')
    return _page(title, "".join(parts))


# ---------------------------------------------------------------------------------------------
def load_run(folder: str | Path) -> dict[str, Any]:
    """A run folder's report.json (written by demo, prune or benchmarks)."""
    path = Path(folder) / "report.json" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no report.json (run `edgeslim demo -o DIR` or `edgeslim prune ... -o DIR`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _points(runs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    points, dense_seen = [], set()
    for name, r in runs:
        for kind in ("dense", "slim"):
            e = r.get(kind) or {}
            if not e.get("macs"):
                continue
            key = (r.get("model"), e.get("macs"))
            if kind == "dense":  # runs of the same model share one dense point
                if key in dense_seen:
                    continue
                dense_seen.add(key)
            label = f"{r.get('model', name)} dense" if kind == "dense" else name
            points.append({"label": label, "kind": kind, "macs": e["macs"], "accuracy": e.get("accuracy"),
                           "latency_ms": (e.get("latency_ms") or {}).get("p50")})
    return points


def _run_row(name: str, r: dict) -> list[Any]:
    d, s = r.get("dense") or {}, r.get("slim") or {}
    dl, sl = (d.get("latency_ms") or {}).get("p50"), (s.get("latency_ms") or {}).get("p50")
    speedup = f"{dl / sl:.2f}×" if dl and sl else "—"
    macs_red = f"{d['macs'] / s['macs']:.2f}×" if d.get("macs") and s.get("macs") else "—"
    return [name, r.get("model", "—"), r.get("method", "—"), _fmt(d.get("accuracy")), _fmt(s.get("accuracy")),
            _fmt(d.get("macs")), _fmt(s.get("macs")), macs_red, _fmt(dl, 3), _fmt(sl, 3), speedup]


_RUN_HEADER = ["run", "model", "method", "acc dense", "acc slim", "MACs dense", "MACs slim", "MACs reduction",
               "p50 dense (ms)", "p50 slim (ms)", "speed-up"]


def render_comparison(runs: list[tuple[str, dict]], title: str = "edgeslim: runs compared") -> str:
    parts = ["<h2>runs</h2>" + _table(_RUN_HEADER, [_run_row(n, r) for n, r in runs])]
    parts.append(_img(comparison_figure(_points(runs)), "accuracy and latency against MACs, every run", "plot-compare"))
    for i, (name, r) in enumerate(runs):
        layers = r.get("layers")
        if layers and layers.get("dense") and layers.get("slim"):
            parts.append(f"<h2>{_e(name)}: layer widths</h2>"
                         + _img(widths_figure(layers["dense"], layers["slim"]), f"{name}: dense vs slim widths",
                                f"plot-widths-{i}"))
    parts.append(f'<p class="small">{_e(FOOTNOTE.replace("`", ""))}</p>')
    return _page(title, "".join(parts))


def write_comparison(out_dir: str | Path, run_dirs: list[str | Path], title: str = "edgeslim: runs compared") -> dict[str, str]:
    """report.html + report.md + comparison.png in ``out_dir`` comparing the runs in ``run_dirs``."""
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": str(out / "report.html"), "markdown": str(out / "report.md")}
    Path(paths["html"]).write_text(render_comparison(runs, title))
    lines = [f"# {title}", "", "| " + " | ".join(_RUN_HEADER) + " |", "|" + "---|" * len(_RUN_HEADER)]
    lines += ["| " + " | ".join(str(c) for c in _run_row(n, r)) + " |" for n, r in runs]
    fig = comparison_figure(_points(runs))
    if fig is not None:
        to_png(fig, out / "comparison.png")
        paths["plot"] = str(out / "comparison.png")
        lines += ["", "![accuracy and latency against MACs](comparison.png)"]
    lines += ["", FOOTNOTE, ""]
    Path(paths["markdown"]).write_text("\n".join(lines))
    return paths
