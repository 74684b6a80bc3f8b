"""Reports: ``report.json`` (everything), ``report.md`` (readable) and plots."""
from .markdown import write_report

__all__ = ["write_report"]
