"""``edgeslim report DIR [DIR...] [-o OUT]``: report.md + self-contained report.html.

One folder: its report is rebuilt from its report.json (in place, or in OUT). Several folders:
they are compared side by side (accuracy vs MACs vs latency) in OUT.
"""
from __future__ import annotations

from pathlib import Path

from .common import add_command


def add_parser(sub) -> None:
    p = add_command(sub, "report", "write report.md and a self-contained report.html for one run or several compared",
                    run, render)
    p.add_argument("runs", nargs="+", metavar="DIR", help="run folders holding report.json (from demo, prune, ...)")
    p.add_argument("-o", "--output", help="output folder (default: the run folder itself; edgeslim-report for several)")
    p.add_argument("--title", help="report title")


def run(args) -> dict:
    from ..report import load_run, write_comparison, write_report

    if len(args.runs) == 1:
        result = load_run(args.runs[0])
        layers = result.pop("layers", None) or {}
        title = args.title or result.get("title") or f"edgeslim report: {Path(args.runs[0]).name}"
        paths = write_report(args.output or args.runs[0], result, layers.get("dense"), layers.get("slim"), title=title)
    else:
        paths = write_comparison(args.output or "edgeslim-report", args.runs,
                                 title=args.title or "edgeslim: runs compared")
    return {"report": paths["html"], "markdown": paths["markdown"], "runs": [str(r) for r in args.runs]}


def render(r: dict) -> None:
    print(f"report: {r['report']}\nmarkdown: {r['markdown']}")
