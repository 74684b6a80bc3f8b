"""Reports: ``report.json`` (everything), ``report.md`` (readable), ``report.html`` (self-contained,
plots embedded) and runs compared side by side."""
from .html import load_run, render_comparison, render_html, write_comparison
from .markdown import write_report

__all__ = ["write_report", "render_html", "render_comparison", "write_comparison", "load_run"]
